//! Identity: JSON Web Tokens in, a validated [`Identity`] out.
//!
//! One [`Authenticator`] serves both transports: Socket.IO handshakes and HTTP bearer tokens.
//! It rejects `alg: none` and any algorithm other than the configured key's (jsonwebtoken
//! checks the header against the one algorithm we allow), bad signatures, wrong `iss`/`aud`,
//! expired tokens, and genders outside the three values. Error texts say what was wrong with
//! the token, never anything about the server.

pub mod dev_secret;
mod roles;

pub use roles::{Role, Roles};

use crate::config::{Config, ConfigError};
use crate::domain::{Gender, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

/// Who is calling, as proven by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    /// `None` when the token has no `gender` claim (the database, else `other`, decides).
    pub gender: Option<Gender>,
    pub name: Option<String>,
    pub roles: Roles,
    /// When the token stops being accepted (its `exp` plus the clock-skew leeway, seconds
    /// since the epoch); `None`: never (the static token, a JWT without `exp`). A socket
    /// opened with it is closed then.
    pub expires_at: Option<i64>,
    /// Proven by the static `ADMIN_TOKEN`, not by a JWT: a caller of its own, whatever the
    /// `sub` of any JWT (see [`caller`](Self::caller)).
    pub static_admin: bool,
}

impl Identity {
    /// Who is calling, for rate-limit buckets and audit records: `jwt:<sub>` for a token's
    /// subject, `ADMIN_TOKEN` for the static token, which no JWT can name (a JWT with `sub`
    /// `admin` must share neither a budget nor an audit name with it).
    pub fn caller(&self) -> String {
        if self.static_admin {
            "ADMIN_TOKEN".to_string()
        } else {
            format!("jwt:{}", self.user_id)
        }
    }

    pub fn require(&self, any_of: &[Role]) -> Result<(), AuthError> {
        if any_of.iter().any(|r| self.roles.contains(*r)) {
            Ok(())
        } else {
            let names: Vec<&str> = any_of.iter().map(|r| r.as_str()).collect();
            Err(AuthError::Forbidden(format!(
                "requires the role {}",
                names.join(" or ")
            )))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A missing, malformed, forged or expired token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A valid token without the role needed.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// The claims of the contract as they arrive, before validation.
#[derive(Debug, Deserialize)]
struct RawClaims {
    sub: Option<String>,
    /// Seconds since the epoch (validated by jsonwebtoken; kept to end live sockets then).
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    gender: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<serde_json::Value>,
    #[serde(default)]
    roles: Option<serde_json::Value>,
}

/// Claims we sign, for development tokens and the `token` subcommand.
#[derive(Debug, Serialize)]
pub struct NewClaims<'a> {
    pub sub: &'a str,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub roles: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
}

pub struct Authenticator {
    decoding: DecodingKey,
    validation: Validation,
    /// Present with an HS256 secret: lets development mode and tests mint tokens.
    encoding: Option<EncodingKey>,
    admin_token: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// A development start without a configured key gets a fresh random secret.
pub struct KeySetup {
    pub authenticator: Authenticator,
    pub generated_secret: bool,
}

impl Authenticator {
    pub fn from_config(cfg: &Config) -> Result<KeySetup, ConfigError> {
        let (decoding, encoding, alg, generated) = if let Some(path) = &cfg.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| ConfigError {
                var: "JWT_PUBLIC_KEY_FILE",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, Algorithm::ES256)
            } else {
                return Err(ConfigError {
                    var: "JWT_PUBLIC_KEY_FILE",
                    message: "not a PEM RSA or EC (P-256) public key".into(),
                });
            };
            (key, None, alg, false)
        } else {
            let (secret, generated) = match &cfg.jwt_secret {
                Some(s) => (s.clone().into_bytes(), false),
                // Config validation refuses production without a key; this is development.
                None => match dev_secret::load_or_create(&cfg.dev_secret_file) {
                    Ok(s) => (s.into_bytes(), true),
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            file = %cfg.dev_secret_file.display(),
                            "development secret not kept in a file; using one for this run only"
                        );
                        let bytes: [u8; 32] = rand::random();
                        (bytes.to_vec(), true)
                    }
                },
            };
            (
                DecodingKey::from_secret(&secret),
                Some(EncodingKey::from_secret(&secret)),
                Algorithm::HS256,
                generated,
            )
        };
        let mut validation = Validation::new(alg);
        // A configured issuer or audience is required, not only checked when present: a
        // token minted for another service (without them) must not pass.
        let mut required = vec!["exp"];
        validation.leeway = 30;
        validation.validate_nbf = true;
        match &cfg.jwt_issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &cfg.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(KeySetup {
            authenticator: Authenticator {
                decoding,
                validation,
                encoding,
                admin_token: cfg.admin_token.clone(),
                issuer: cfg.jwt_issuer.clone(),
                audience: cfg.jwt_audience.clone(),
            },
            generated_secret: generated,
        })
    }

    /// Validate a JWT.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = decode::<RawClaims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            let why = match e.kind() {
                ExpiredSignature => "token expired",
                InvalidIssuer => "wrong issuer",
                InvalidAudience => "wrong audience",
                InvalidSignature => "bad signature",
                InvalidAlgorithm | InvalidAlgorithmName => "algorithm not accepted",
                MissingRequiredClaim(_) => "token lacks a required claim",
                ImmatureSignature => "token not valid yet",
                _ => "malformed token",
            };
            AuthError::Unauthorized(why.into())
        })?;
        let c = data.claims;
        let bad = |m: &str| AuthError::Unauthorized(m.to_string());
        let sub = c.sub.ok_or_else(|| bad("token lacks sub"))?;
        let user_id =
            UserId::parse(&sub).map_err(|e| AuthError::Unauthorized(format!("sub: {e}")))?;
        let gender = match c.gender {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                s.parse()
                    .map_err(|_| bad("gender must be male, female or other"))?,
            ),
            Some(_) => return Err(bad("gender must be male, female or other")),
        };
        let name = match c.name {
            Some(serde_json::Value::String(s)) if !crate::domain::text::storable(&s) => {
                return Err(bad("name: text must not contain the NUL character"));
            }
            Some(serde_json::Value::String(s)) => Some(s.chars().take(256).collect()),
            _ => None,
        };
        let roles = match c.roles {
            // Only an absent claim defaults to `user`.
            None => Roles::from(Role::User),
            Some(serde_json::Value::Array(items)) => {
                Roles::from_names(items.iter().filter_map(|v| v.as_str()))
            }
            Some(_) => return Err(bad("roles must be an array")),
        };
        Ok(Identity {
            user_id,
            gender,
            name,
            roles,
            // Accepted until then, clock-skew leeway included: a socket is closed when a
            // handshake with the same token would first be refused.
            expires_at: c
                .exp
                .map(|e| (e as i64).saturating_add(self.validation.leeway as i64)),
            static_admin: false,
        })
    }

    /// An HTTP bearer: a JWT or the static admin token.
    pub fn verify_bearer(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(admin) = &self.admin_token
            && constant_time_eq(admin.as_bytes(), token.as_bytes())
        {
            return Ok(Identity {
                user_id: UserId::parse("admin").expect("valid id"),
                gender: None,
                name: Some("admin token".into()),
                roles: Roles::from(Role::Admin),
                expires_at: None,
                static_admin: true,
            });
        }
        self.verify(token)
    }

    /// Sign a token with the HS256 secret; `None` when the key is public-only.
    pub fn issue(
        &self,
        sub: &str,
        gender: Option<Gender>,
        name: Option<&str>,
        roles: &[Role],
        ttl_secs: u64,
    ) -> Option<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let claims = NewClaims {
            sub,
            exp: now + ttl_secs,
            iat: now,
            gender,
            name,
            roles: roles.iter().map(|r| r.as_str()).collect(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            self.encoding.as_ref()?,
        )
        .ok()
    }
}

/// Comparing secrets byte by byte with early exit would leak their prefix through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
