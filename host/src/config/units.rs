//! Parsing of the config file's durations (`5s`, `500ms`, `1m30s`) and byte
//! sizes (`32MiB`), written the way Go's `time.ParseDuration` reads them so a
//! file shared with a Yggdrasil app means the same thing to both.

use std::time::Duration;

/// Parses a Go-style duration: one or more `<number><unit>` pairs, units `ns`,
/// `us`/`µs`, `ms`, `s`, `m`, `h`. A bare number (other than `0`) is refused,
/// because Go would read it as nanoseconds, which is never what was meant.
///
/// The arithmetic is Go's `time.ParseDuration`: the whole part is exact and
/// the fraction is truncated to the nanosecond, so `1.9999999996s` is
/// 1.999999999 s here as in a Yggdrasil app reading the same file.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative"));
    }
    let too_long = || format!("`{text}` is longer than a year");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                (Some(&after[..len]), &after[len..])
            }
            None => (None, after),
        };
        if whole.is_empty() && fraction.is_none_or(str::is_empty) {
            return Err(format!(
                "`{text}` is not a duration (expected e.g. 5s, 500ms, 1m30s)"
            ));
        }
        let number = &rest[..rest.len() - after.len()];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "`{text}` has no unit (write e.g. `{number}s` or `{number}ms`)"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
        if let Some(digits) = fraction {
            // Go keeps fraction digits while they fit, then scales in f64.
            let (mut value, mut scale) = (0u64, 1f64);
            for digit in digits.bytes() {
                match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(digit - b'0')))
                {
                    Some(next) => {
                        value = next;
                        scale *= 10.0;
                    }
                    None => break,
                }
            }
            nanos = nanos
                .checked_add((value as f64 * (nanos_per_unit as f64 / scale)) as u64)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = after;
    }
    // A year is far beyond any sensible timeout.
    if total > 365 * 24 * 3_600_000_000_000 {
        return Err(too_long());
    }
    Ok(Duration::from_nanos(total))
}

/// Parses a byte size: a whole number with an optional unit, binary (`KiB`,
/// `MiB`, `GiB`, or `Ki`, `Mi`, `Gi`) or decimal (`KB`, `MB`, `GB`), or `B`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let number_len = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    if number.is_empty() {
        return Err(format!("`{text}` is not a size (expected e.g. 32MiB)"));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" | "K" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10 s").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("ten")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_duration("5d")
                .unwrap_err()
                .contains("unknown unit `d`")
        );
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1..5s").is_err());
        assert!(parse_duration("9999999h").unwrap_err().contains("year"));
        assert!(
            parse_duration("99999999999999999999999h")
                .unwrap_err()
                .contains("year")
        );
        assert!(parse_duration(".s").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn fractions_truncate_like_go() {
        // Found by fuzzing: these used to round up.
        assert_eq!(
            parse_duration("1.9999999996s"),
            Ok(Duration::from_nanos(1_999_999_999))
        );
        assert_eq!(parse_duration("0.5ns"), Ok(Duration::ZERO));
        // Values Go reads exactly, which naive f64 arithmetic gets wrong.
        assert_eq!(parse_duration("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.1h"), Ok(Duration::from_secs(3960)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("32Mi"), Ok(32 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
