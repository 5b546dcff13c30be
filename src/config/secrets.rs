//! Where secrets come from: `{ env }`, `{ file }` or `{ credential }`
//! (systemd's `$CREDENTIALS_DIRECTORY`), the explicit dev mode that
//! generates the missing ones into a file beside the config, and the
//! placeholders `hookgate route` builds a closed source's provider with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::secret::Secret;

/// A reference to a secret, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Credential(String),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Credential(name) => write!(f, "credential:{name}"),
        }
    }
}

/// The shape a generated dev secret must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretShape {
    /// Any text: 32 random bytes as hex.
    Token,
    /// A Standard Webhooks key: `whsec_` + base64 of 32 random bytes.
    Whsec,
    /// Issued by someone else (a webhook URL, an API token): dev mode never
    /// makes one up, so the sink stays disabled until it is set.
    External,
}

/// Why a secret could not be read. The message says what to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "environment variable {0} is not set (export it, or use {{ file }} / {{ credential }})"
    )]
    EnvUnset(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("credential {name} not found: $CREDENTIALS_DIRECTORY is not set (add LoadCredential={name}:… to the unit)")]
    NoCredentialsDir { name: String },
    #[error(
        "cannot read credential {name} from {path}: {reason} (check LoadCredential= in the unit)"
    )]
    Credential {
        name: String,
        path: String,
        reason: String,
    },
    #[error("secret {0} is empty")]
    Empty(String),
}

/// Reads secret references. Holds the dev store when dev mode is on.
#[derive(Debug, Default)]
pub struct Resolver {
    credentials_dir: Option<PathBuf>,
    dev: Option<DevStore>,
    /// A secret that cannot be read is a fixed placeholder of its shape.
    placeholders: bool,
}

impl Resolver {
    /// Reads from the process environment and `$CREDENTIALS_DIRECTORY`.
    pub fn from_env() -> Resolver {
        Resolver {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            dev: None,
            placeholders: false,
        }
    }

    /// Every secret that cannot be read becomes a fixed placeholder of its
    /// shape (nothing is written anywhere). For `hookgate route`, which
    /// needs a source's provider to shape and read a request as ingress
    /// does, never to prove one: a placeholder is public.
    pub fn with_placeholders(mut self) -> Resolver {
        self.placeholders = true;
        self
    }

    /// Adds the dev store: secrets that cannot be read come from `path`, and
    /// when `generate` is set, missing ones are generated and written there.
    pub fn with_dev(mut self, path: PathBuf, generate: bool) -> Result<Resolver, String> {
        self.dev = Some(DevStore::open(path, generate)?);
        Ok(self)
    }

    /// The secrets dev mode generated during this load, by reference.
    pub fn generated(&self) -> Vec<String> {
        self.dev
            .as_ref()
            .map(|d| d.generated.lock().expect("dev store lock").clone())
            .unwrap_or_default()
    }

    pub fn dev_path(&self) -> Option<&Path> {
        self.dev.as_ref().map(|d| d.path.as_path())
    }

    pub fn resolve(&self, r: &SecretRef, shape: SecretShape) -> Result<Secret, SecretError> {
        match self.read(r) {
            Ok(s) => Ok(s),
            Err(e) => match &self.dev {
                Some(dev) => dev.get_or_generate(r, shape).ok_or(e),
                None if self.placeholders => Ok(Secret::new(placeholder(shape))),
                None => Err(e),
            },
        }
    }

    fn read(&self, r: &SecretRef) -> Result<Secret, SecretError> {
        let value = match r {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvUnset(name.clone()))?
            }
            SecretRef::File(path) => {
                std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            SecretRef::Credential(name) => {
                let dir = self
                    .credentials_dir
                    .as_ref()
                    .ok_or_else(|| SecretError::NoCredentialsDir { name: name.clone() })?;
                let path = dir.join(name);
                std::fs::read_to_string(&path).map_err(|e| SecretError::Credential {
                    name: name.clone(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
        };
        // Files and credentials usually end with a newline the secret lacks.
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(SecretError::Empty(r.to_string()));
        }
        Ok(Secret::new(value))
    }
}

/// `--dev`: a TOML file of `"env:NAME" = "value"` lines, mode 0600.
#[derive(Debug)]
struct DevStore {
    path: PathBuf,
    generate: bool,
    values: Mutex<BTreeMap<String, String>>,
    generated: Mutex<Vec<String>>,
}

impl DevStore {
    fn open(path: PathBuf, generate: bool) -> Result<DevStore, String> {
        let values = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<BTreeMap<String, String>>(&text)
                .map_err(|e| format!("{}: {}", path.display(), e.message()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(DevStore {
            path,
            generate,
            values: Mutex::new(values),
            generated: Mutex::new(Vec::new()),
        })
    }

    fn get_or_generate(&self, r: &SecretRef, shape: SecretShape) -> Option<Secret> {
        let key = r.to_string();
        let mut values = self.values.lock().expect("dev store lock");
        if let Some(v) = values.get(&key) {
            return Some(Secret::new(v.as_str()));
        }
        if !self.generate || shape == SecretShape::External {
            return None;
        }
        let value = generate(shape);
        values.insert(key.clone(), value.clone());
        if let Err(e) = write_private(&self.path, &toml::to_string(&*values).ok()?) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write dev secrets");
            return None;
        }
        self.generated.lock().expect("dev store lock").push(key);
        Some(Secret::new(value))
    }
}

/// A secret of `shape` that anyone may know: its bytes are fixed.
fn placeholder(shape: SecretShape) -> String {
    match shape {
        SecretShape::Token => "hookgate-placeholder".into(),
        SecretShape::Whsec => format!("whsec_{}", crate::verify::encode_b64(&[0; 32])),
        // Sink URLs are checked to be http(s) URLs.
        SecretShape::External => "https://placeholder.invalid/".into(),
    }
}

fn generate(shape: SecretShape) -> String {
    let bytes: [u8; 32] = rand::random();
    match shape {
        SecretShape::Token | SecretShape::External => hex::encode(bytes),
        SecretShape::Whsec => format!("whsec_{}", crate::verify::encode_b64(&bytes)),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(b"# Generated by `hookgate serve --dev`. Development only: never deploy these.\n")?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc\n").unwrap();
        let s = Resolver::default()
            .resolve(&SecretRef::File(path), SecretShape::Token)
            .unwrap();
        assert_eq!(s.expose(), b"abc");
    }

    #[test]
    fn missing_env_says_what_to_set() {
        let e = Resolver::default()
            .resolve(
                &SecretRef::Env("HOOKGATE_TEST_SURELY_UNSET".into()),
                SecretShape::Token,
            )
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("HOOKGATE_TEST_SURELY_UNSET is not set"));
    }

    #[test]
    fn credential_reads_from_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gh"), "k3y").unwrap();
        let r = Resolver {
            credentials_dir: Some(dir.path().to_owned()),
            ..Resolver::default()
        };
        let s = r
            .resolve(&SecretRef::Credential("gh".into()), SecretShape::Token)
            .unwrap();
        assert_eq!(s.expose(), b"k3y");
        let e = r
            .resolve(&SecretRef::Credential("nope".into()), SecretShape::Token)
            .unwrap_err();
        assert!(matches!(e, SecretError::Credential { .. }));
    }

    #[test]
    fn dev_mode_generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.toml");
        let r = SecretRef::Env("HOOKGATE_TEST_DEV_UNSET".into());
        let a = Resolver::default().with_dev(path.clone(), true).unwrap();
        let first = a.resolve(&r, SecretShape::Whsec).unwrap();
        assert!(first.expose_str().unwrap().starts_with("whsec_"));
        assert_eq!(
            a.generated(),
            vec!["env:HOOKGATE_TEST_DEV_UNSET".to_string()]
        );
        // Webhook URLs and API tokens are never made up.
        let url = SecretRef::Env("HOOKGATE_TEST_DEV_URL_UNSET".into());
        assert!(a.resolve(&url, SecretShape::External).is_err());
        // A reader that may not generate (hookgate send) sees the same value.
        let b = Resolver::default().with_dev(path, false).unwrap();
        assert_eq!(b.resolve(&r, SecretShape::Whsec).unwrap(), first);
        assert!(b.generated().is_empty());
    }

    /// `hookgate route`: a secret not set is a fixed placeholder of its
    /// shape, written nowhere; one that is set is itself.
    #[test]
    fn placeholders_stand_in_for_secrets_not_set() {
        let r = Resolver::default().with_placeholders();
        let unset = SecretRef::Env("HOOKGATE_TEST_PLACEHOLDER_UNSET".into());
        let whsec = r.resolve(&unset, SecretShape::Whsec).unwrap();
        assert!(crate::verify::standard::decode_whsec(whsec.expose_str().unwrap()).is_some());
        let url = r.resolve(&unset, SecretShape::External).unwrap();
        assert!(url.expose_str().unwrap().parse::<http::Uri>().is_ok());
        assert_eq!(
            r.resolve(&unset, SecretShape::Token).unwrap(),
            r.resolve(&unset, SecretShape::Token).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "real").unwrap();
        let set = SecretRef::File(dir.path().join("s"));
        assert_eq!(
            r.resolve(&set, SecretShape::Token).unwrap().expose(),
            b"real"
        );
    }
}
