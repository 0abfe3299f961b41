//! Timestamps for plugin output, without a date crate.
//!
//! Metadata values are strings, and RFC 3339 in UTC with whole seconds
//! (`2024-01-26T10:00:00Z`) is the format everyone can parse and that sorts
//! as text. A date crate would add tens of kilobytes to every plugin for
//! this one conversion, so it is done here with the days-from-civil
//! arithmetic (Howard Hinnant, "chrono-Compatible Low-Level Date
//! Algorithms").

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `time` as RFC 3339 in UTC with whole seconds
/// (`2024-01-26T10:00:00Z`). Fractions of a second are dropped (rounded
/// towards the past).
///
/// Years outside 0000–9999 cannot be written in RFC 3339; they come out with
/// more digits or a sign rather than being clamped.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use ygg_agent_sdk::time::rfc3339_utc;
///
/// let t = UNIX_EPOCH + Duration::from_secs(1_706_263_200);
/// assert_eq!(rfc3339_utc(t), "2024-01-26T10:00:00Z");
/// ```
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = unix_seconds(time);
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// The current time as [`rfc3339_utc`] formats it.
pub fn now_rfc3339() -> String {
    rfc3339_utc(SystemTime::now())
}

/// Whole seconds since 1970-01-01T00:00:00Z, rounded towards the past
/// (negative before 1970), saturating at the ends of `i64`.
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).map_or(i64::MIN, |s| -s);
            // -0.5 s is in the second that starts at -1 s.
            if before.subsec_nanos() > 0 {
                whole.saturating_sub(1)
            } else {
                whole
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) in the proleptic
/// Gregorian calendar. Eras are 400-year cycles (146 097 days) starting on
/// March 1st, which puts the leap day at the end of the year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch from 1970-01-01 to 0000-03-01. `days` comes from
    // seconds / 86 400, so this cannot overflow.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let mp = (5 * day_of_year + 2) / 153; // month from March, [0, 11]
    let day = day_of_year - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction; the casts cannot truncate.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }

    #[test]
    fn formats_fixed_vectors() {
        // Checked against GNU `date -u -d @SECS +%Y-%m-%dT%H:%M:%SZ`.
        let vectors = [
            (0, "1970-01-01T00:00:00Z"),
            (1_706_263_200, "2024-01-26T10:00:00Z"),
            (1_234_567_890, "2009-02-13T23:31:30Z"),
            (68_169_600, "1972-02-29T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"), // leap day of a 400-year
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"), // 2100 is not leap
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (-62_135_596_800, "0001-01-01T00:00:00Z"),
        ];
        for (secs, want) in vectors {
            assert_eq!(rfc3339_utc(at(secs)), want, "{secs}");
        }
    }

    #[test]
    fn drops_fractions_towards_the_past() {
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_999)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(500)), -1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(2_500)), 2);
    }

    #[test]
    fn civil_from_days_matches_counting_day_by_day() {
        // An independent, obviously correct calendar walked from 0001-01-01
        // to 2401-01-01: covers every leap rule (4, 100, 400).
        fn days_in(year: i64, month: u32) -> u32 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        let (mut y, mut m, mut d) = (1_i64, 1_u32, 1_u32);
        let mut days = -719_162; // 0001-01-01 relative to 1970-01-01
        while y < 2401 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            days += 1;
            d += 1;
            if d > days_in(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn now_is_well_formed() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }
}
