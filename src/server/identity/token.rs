//! Tokens signed by an app that embeds Confab: its users arrive signed in. `CONFAB_JWT_SECRET` (HS256) or
//! `CONFAB_JWT_PUBLIC_KEY` (RS256 or EdDSA, PEM) says whose signature counts; only that one algorithm
//! is accepted (so never `alg: none`, nor an HMAC made with a public key).
//!
//! Claims: `sub` (the app's stable id for the user), `name`, `exp`, and optionally `admin`.

use crate::protocol::validate_name;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The claims Confab reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    /// The name to show, validated as any name.
    pub name: String,
    pub admin: bool,
}

/// The claims as a token carries them, any of them possibly missing.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    name: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// Why a token was refused; each has its own error code and close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Signed right, but past its `exp`: the app should send a fresh one.
    Expired,
    /// Anything else: a bad signature, another algorithm, missing or malformed claims.
    Invalid(String),
}

impl TokenError {
    /// The sentence for people (and logs); it never includes the token.
    pub fn message(&self) -> String {
        match self {
            TokenError::Expired => "The sign-in token has expired; ask for a fresh one.".into(),
            TokenError::Invalid(why) => format!("The sign-in token is not valid: {why}."),
        }
    }
}

/// Checks tokens against the one configured key.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// The verifier the configuration asks for: none without a secret or key. `public_key` is PEM text, or
    /// the path of a PEM file.
    pub fn from_config(
        secret: Option<&str>,
        public_key: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let (key, algorithm) = match (secret, public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("set CONFAB_JWT_SECRET or CONFAB_JWT_PUBLIC_KEY, not both".to_owned())
            }
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err("CONFAB_JWT_SECRET must be at least 32 bytes".to_owned());
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(key)) => {
                let pem = if key.trim_start().starts_with("-----BEGIN") {
                    key.to_owned()
                } else {
                    std::fs::read_to_string(key.trim())
                        .map_err(|e| format!("cannot read CONFAB_JWT_PUBLIC_KEY {key:?}: {e}"))?
                };
                // The key's own type says which algorithm it signs with.
                match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Ok(key) => (key, Algorithm::RS256),
                    Err(_) => match DecodingKey::from_ed_pem(pem.as_bytes()) {
                        Ok(key) => (key, Algorithm::EdDSA),
                        Err(_) => {
                            return Err(
                                "CONFAB_JWT_PUBLIC_KEY is neither an RSA nor an Ed25519 public key in PEM"
                                    .to_owned(),
                            )
                        }
                    },
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Some(Self { key, validation }))
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<RawClaims>(token.trim(), &self.key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid(
                    "signed with an algorithm this server does not accept".into(),
                ),
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Invalid(format!("the {claim} claim is missing"))
                }
                ErrorKind::Json(_) => TokenError::Invalid("its claims are malformed".into()),
                _ => TokenError::Invalid("it is not a signed token".into()),
            })?
            .claims;
        let missing = |claim: &str| TokenError::Invalid(format!("the {claim} claim is missing"));
        let sub = claims.sub.ok_or_else(|| missing("sub"))?;
        if sub.trim().is_empty() || sub.len() > 200 {
            return Err(TokenError::Invalid(
                "the sub claim is empty or too long".into(),
            ));
        }
        let name = claims.name.ok_or_else(|| missing("name"))?;
        let name = validate_name(&name)
            .map_err(|err| TokenError::Invalid(format!("its name: {}", err.message())))?;
        Ok(Claims {
            sub,
            name,
            admin: claims.admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a secret of at least thirty-two bytes!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn signed(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::from_config(Some(SECRET), None)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let token =
            signed(json!({"sub": "u-1", "name": " Ann ", "exp": now() + 600, "admin": true}));
        let claims = verifier().verify(&token).unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "u-1".into(),
                name: "Ann".into(),
                admin: true
            }
        );
    }

    #[test]
    fn bad_tokens_are_refused_each_with_its_reason() {
        let verifier = verifier();
        let expired = signed(json!({"sub": "u", "name": "Ann", "exp": now() - 600}));
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));

        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u", "name": "Ann", "exp": now() + 600}),
            &EncodingKey::from_secret(b"another secret, also thirty-two bytes"),
        )
        .unwrap();
        assert!(
            matches!(verifier.verify(&forged), Err(TokenError::Invalid(why)) if why == "bad signature")
        );

        // alg: none, hand-made: a header and claims with no signature.
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "u", "name": "Ann", "exp": now() + 600}))
        );
        assert!(matches!(
            verifier.verify(&none),
            Err(TokenError::Invalid(_))
        ));

        // Another algorithm than the configured one (HS512 with the right secret).
        let other = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "u", "name": "Ann", "exp": now() + 600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(
            matches!(verifier.verify(&other), Err(TokenError::Invalid(why)) if why.contains("algorithm"))
        );

        let no_sub = signed(json!({"name": "Ann", "exp": now() + 600}));
        assert!(
            matches!(verifier.verify(&no_sub), Err(TokenError::Invalid(why)) if why.contains("sub"))
        );
        let bad_name = signed(json!({"sub": "u", "name": "evil\u{202E}gnp", "exp": now() + 600}));
        assert!(
            matches!(verifier.verify(&bad_name), Err(TokenError::Invalid(why)) if why.contains("name"))
        );
        let blank_name = signed(json!({"sub": "u", "name": "  ", "exp": now() + 600}));
        assert!(verifier.verify(&blank_name).is_err());
        assert!(verifier.verify("not.a.token").is_err());
        assert!(verifier.verify("").is_err());
    }

    /// A key pair made for this test only (`openssl genpkey -algorithm ed25519`).
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAxAkj51kDialg23gm7OXhl7WEm/RbOIihLdq4Yq2Yvv\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAhDgxMXvgARydJ6TUYis978hoTUIRRiMcvUH8GLt0WeY=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_public_key_verifies_eddsa_and_refuses_an_hmac_made_with_it() {
        let verifier = TokenVerifier::from_config(None, Some(ED_PUBLIC))
            .unwrap()
            .unwrap();
        let claims = json!({"sub": "u-9", "name": "Ed", "exp": now() + 600});
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(verifier.verify(&token).unwrap().sub, "u-9");
        // The classic confusion: an HS256 token whose "secret" is the public key.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(ED_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(verifier.verify(&confused).is_err());
        // A path works too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, ED_PUBLIC).unwrap();
        let from_file = TokenVerifier::from_config(None, Some(path.to_str().unwrap()))
            .unwrap()
            .unwrap();
        assert!(from_file.verify(&token).is_ok());
    }

    #[test]
    fn configuration_mistakes_are_clear() {
        assert!(TokenVerifier::from_config(None, None).unwrap().is_none());
        assert!(TokenVerifier::from_config(Some("short"), None)
            .err()
            .unwrap()
            .contains("32 bytes"));
        assert!(TokenVerifier::from_config(Some(SECRET), Some("k"))
            .err()
            .unwrap()
            .contains("not both"));
        assert!(TokenVerifier::from_config(
            None,
            Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        )
        .err()
        .unwrap()
        .contains("neither"));
    }
}
