//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! uses it: no channel binding, the user name taken from the startup
//! message.

use std::hash::{BuildHasher, Hasher};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

pub struct Client {
    password: String,
    nonce: String,
    /// Set by `final_message`: what the server's signature is checked with.
    auth_message: String,
    salted: [u8; 32],
}

impl Client {
    pub fn new(password: &str) -> Client {
        Client::with_nonce(password, random_nonce())
    }

    fn with_nonce(password: &str, nonce: String) -> Client {
        Client {
            password: password.to_owned(),
            nonce,
            auth_message: String::new(),
            salted: [0; 32],
        }
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    pub fn first_message(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    /// Answers the server's first message (`r=…,s=…,i=…`) with the proof.
    pub fn final_message(&mut self, server_first: &str) -> Result<String, String> {
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name))
                .ok_or_else(|| format!("SCRAM: no `{name}` in the server's message"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err("SCRAM: the server's nonce does not extend ours".into());
        }
        let salt = B64
            .decode(field("s=")?)
            .map_err(|_| "SCRAM: bad salt".to_string())?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| "SCRAM: bad iteration count".to_string())?;
        if iterations == 0 || iterations > 1_000_000 {
            return Err(format!("SCRAM: refusing {iterations} iterations"));
        }
        self.salted = pbkdf2(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&self.salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.first_bare());
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message (`v=…`): it knows the password too.
    pub fn verify_server(&self, server_final: &str) -> Result<(), String> {
        let Some(signature) = server_final.strip_prefix("v=") else {
            return Err(format!("SCRAM: the server refused: {server_final}"));
        };
        let server_key = hmac(&self.salted, b"Server Key");
        let expected = hmac(&server_key, self.auth_message.as_bytes());
        if B64.decode(signature).ok().as_deref() == Some(&expected[..]) {
            Ok(())
        } else {
            Err(
                "SCRAM: the server's signature is wrong (not the server that holds the password)"
                    .into(),
            )
        }
    }
}

/// 24 random bytes, base64: from the randomly seeded hashers of std, which
/// draw on `wasi:random` (no random crate needed for a nonce).
fn random_nonce() -> String {
    let mut bytes = Vec::with_capacity(24);
    for i in 0..3u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(i);
        bytes.extend_from_slice(&hasher.finish().to_le_bytes());
    }
    B64.encode(bytes)
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// PBKDF2-HMAC-SHA-256 with one 32-byte block.
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (user "user", password "pencil").
    #[test]
    fn the_rfc_7677_exchange() {
        let mut client = Client::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO".into());
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        client.final_message(server_first).unwrap();
        // The RFC's client-first-message-bare names the user, PostgreSQL's
        // leaves it empty: rebuild the RFC's auth message to check the
        // proof and the server's signature against its vectors.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = pbkdf2(b"pencil", &salt, 4096);
        assert_eq!(client.salted, salted);
        let auth = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let proof: Vec<u8> = client_key
            .iter()
            .zip(hmac(&stored, auth.as_bytes()))
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_key = hmac(&salted, b"Server Key");
        assert_eq!(
            B64.encode(hmac(&server_key, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_nonce_that_does_not_extend_ours_is_refused() {
        let mut client = Client::with_nonce("pw", "abc".into());
        assert!(client.final_message("r=xyz,s=AAAA,i=4096").is_err());
    }
}
