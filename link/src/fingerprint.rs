//! A public key's fingerprint: SHA-256 of its DER SubjectPublicKeyInfo, written as SSH
//! writes them (`SHA256:` and unpadded base64). Pinning the key rather than the certificate
//! lets a tracker renew its certificate without its users noticing.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a key fingerprint is SHA256: and 43 characters of base64 (as `tracker fingerprint` prints it)"
)]
pub struct BadFingerprint;

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Fingerprint, BadFingerprint> {
        let b64 = s
            .strip_prefix("SHA256:")
            .or_else(|| s.strip_prefix("sha256:"))
            .ok_or(BadFingerprint)?;
        // 32 bytes are 43 characters; checked first so junk never reaches the decoder big.
        if b64.len() != 43 {
            return Err(BadFingerprint);
        }
        let bytes = STANDARD_NO_PAD.decode(b64).map_err(|_| BadFingerprint)?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| BadFingerprint)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_as_ssh_does() {
        let f = Fingerprint::of_spki(b"some key");
        let s = f.to_string();
        assert!(s.starts_with("SHA256:") && s.len() == 7 + 43, "{s}");
        assert_eq!(s.parse::<Fingerprint>(), Ok(f));
        assert_eq!(s.replace("SHA256", "sha256").parse::<Fingerprint>(), Ok(f));
        for bad in [
            "",
            "SHA256:",
            &s[..s.len() - 1],
            &format!("{s}A"),
            &s[7..],
            "SHA256:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(bad.parse::<Fingerprint>(), Err(BadFingerprint), "{bad}");
        }
    }
}
