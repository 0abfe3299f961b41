//! Signed plugins: when `agent.plugins.trustedKeys` lists minisign public
//! keys, a plugin loads only with a valid detached signature beside it,
//! `<name>.wasm.minisig` (minisign's own format, made with
//! `minisign -S -s key.sec -m <name>.wasm`), by one of those keys, over the
//! exact bytes that are then compiled. Verification is the
//! `minisign-verify` crate's (by minisign's author): both the prehashed
//! signatures minisign 0.11 makes by default and the legacy ones of
//! `minisign -l` are accepted.

use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

/// The extension added to a plugin file's name for its signature.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// Signature files larger than this are refused unread (a real one is
/// about 300 bytes).
const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

/// The signature file of the plugin file `plugin`.
pub fn signature_path(plugin: &Path) -> PathBuf {
    let mut name = plugin.as_os_str().to_os_string();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

/// Reads the signature file of `plugin`, if there is one. Blocking.
pub fn read_signature(plugin: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let path = signature_path(plugin);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_SIGNATURE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if text.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(format!(
            "{} is over {MAX_SIGNATURE_BYTES} bytes: not a minisign signature",
            path.display()
        ));
    }
    Ok(Some(text))
}

/// Checks that `signature` (a `.minisig` file's text) is a valid signature
/// of `bytes` by one of `keys` (base64 key lines, from [`parse_public_key`]).
/// `Err` says why not, in words for the log.
pub fn verify(keys: &[String], bytes: &[u8], signature: Option<&str>) -> Result<(), String> {
    let Some(signature) = signature else {
        return Err(format!(
            "unsigned: agent.plugins.trustedKeys is set, and there is no {SIGNATURE_SUFFIX} signature file beside it (sign it with `minisign -S -s key.sec -m FILE.wasm`)"
        ));
    };
    let signature = Signature::decode(signature)
        .map_err(|e| format!("its {SIGNATURE_SUFFIX} file is not a minisign signature: {e}"))?;
    let mut mismatch = false;
    for key in keys {
        let Ok(key) = PublicKey::from_base64(key) else {
            continue;
        };
        match key.verify(bytes, &signature, true) {
            Ok(()) => return Ok(()),
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(_) => mismatch = true,
        }
    }
    if mismatch {
        Err("its signature does not match its bytes (changed after signing, or a signature of another file)".into())
    } else {
        Err("signed by a key that is not in agent.plugins.trustedKeys".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_public_key;

    // From minisign-verify's documentation: a prehashed signature of `test`.
    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const SIGNATURE: &str = "untrusted comment: signature from minisign secret key
RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=
trusted comment: timestamp:1633700835\tfile:test\tprehashed
wLMDjy9FLAuxZ3q4NlEvkgtyhrr0gtTu6KC4KBJdITbbOeAi1zBIYo0v4iTgt8jJpIidRJnp94ABQkJAgAooBQ==";

    /// Times verifying `$YGG_MEASURE_SIGNED` (a plugin with its
    /// `.minisig`) by the key in `$YGG_MEASURE_KEY` (a `.pub` file), beside
    /// hashing the same bytes with SHA-256 as every load does: `cargo test
    /// -p ygg-agent --lib measure_verify -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: needs YGG_MEASURE_SIGNED and YGG_MEASURE_KEY"]
    fn measure_verify() {
        use sha2::Digest;
        let plugin = PathBuf::from(std::env::var_os("YGG_MEASURE_SIGNED").unwrap());
        let key = std::fs::read_to_string(std::env::var_os("YGG_MEASURE_KEY").unwrap()).unwrap();
        let keys = [parse_public_key(&key).unwrap()];
        let bytes = std::fs::read(&plugin).unwrap();
        let signature = read_signature(&plugin).unwrap().unwrap();
        let mut verify_times = Vec::new();
        let mut hash_times = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            verify(&keys, &bytes, Some(&signature)).unwrap();
            verify_times.push(started.elapsed());
            let started = std::time::Instant::now();
            std::hint::black_box(sha2::Sha256::digest(&bytes));
            hash_times.push(started.elapsed());
        }
        verify_times.sort();
        hash_times.sort();
        eprintln!(
            "{} ({} bytes): verify median {:?}; SHA-256 median {:?}",
            plugin.display(),
            bytes.len(),
            verify_times[2],
            hash_times[2]
        );
    }

    #[test]
    fn keys_are_read_from_a_line_or_a_pub_file() {
        assert_eq!(parse_public_key(KEY).unwrap(), KEY);
        let file = format!("untrusted comment: minisign public key 1F\n{KEY}\n");
        assert_eq!(parse_public_key(&file).unwrap(), KEY);
        assert!(parse_public_key("RWnot-a-key").is_err());
        assert!(parse_public_key("").is_err());
    }

    #[test]
    fn only_the_signed_bytes_by_a_trusted_key_pass() {
        let keys = [KEY.to_string()];
        assert_eq!(verify(&keys, b"test", Some(SIGNATURE)), Ok(()));
        let tampered = verify(&keys, b"tesT", Some(SIGNATURE)).unwrap_err();
        assert!(tampered.contains("does not match"), "{tampered}");
        let unsigned = verify(&keys, b"test", None).unwrap_err();
        assert!(unsigned.starts_with("unsigned"), "{unsigned}");
        let garbage = verify(&keys, b"test", Some("hello")).unwrap_err();
        assert!(garbage.contains("not a minisign signature"), "{garbage}");
    }
}
