//! Blob storage: S3 in production (presigned URLs, the client talks to S3 directly), a folder on
//! embedded defaults (Guildhall serves the files itself behind URLs it signs with HMAC-SHA256).
//!
//! Keys are chosen by the services (`avatar/0192...`), never by players; `Local` still refuses
//! anything but `[a-z0-9-]` segments so that no key can leave its folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::presigning::PresigningConfig;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{BlobConfig, Config};

/// Where and how a client uploads: a `PUT` of the bytes to `url` with exactly these headers.
#[derive(Debug, Clone)]
pub struct PresignedUpload {
    /// The signed URL.
    pub url: String,
    /// Headers the client must send (they are part of the signature).
    pub headers: BTreeMap<String, String>,
}

/// What storage knows of a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Stored size in bytes.
    pub size: u64,
}

/// The blob store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Blobs {
    /// Amazon S3 (or an emulator at `AWS_ENDPOINT_URL`).
    S3(S3Blobs),
    /// A local folder.
    Local(LocalBlobs),
}

impl Blobs {
    /// Connects the store `config.blobs` names.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        match &config.blobs {
            BlobConfig::S3 { bucket, prefix } => {
                let sdk = crate::aws::sdk_config(&config.aws).await;
                // An emulator on an IP address cannot serve bucket subdomains.
                let path_style = config.aws.endpoint_url.is_some();
                let s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style).build();
                let client = aws_sdk_s3::Client::from_conf(s3);
                // URLs for players are signed for the endpoint they reach.
                let presigner = match &config.aws.public_endpoint_url {
                    Some(public) => aws_sdk_s3::Client::from_conf(
                        aws_sdk_s3::config::Builder::from(&sdk).endpoint_url(public).force_path_style(true).build(),
                    ),
                    None => client.clone(),
                };
                Ok(Blobs::S3(S3Blobs { client, presigner, bucket: bucket.clone(), prefix: prefix.clone() }))
            }
            BlobConfig::Local { dir } => {
                tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
                let key = match &config.blob_signing_key {
                    Some(key) => key.expose().as_bytes().to_vec(),
                    None => load_or_generate_key(&config.data_dir.join("blob-url-key"))?,
                };
                Ok(Blobs::Local(LocalBlobs { dir: dir.clone(), key: Arc::new(key) }))
            }
        }
    }

    /// A URL to upload `key` with one `PUT` of exactly `size` bytes of `content_type`, valid for
    /// `ttl`, that creates the object but never replaces one: on S3 an `If-None-Match: *`
    /// conditional write signed into the URL (S3 answers 412 when the key holds an object); the
    /// local store refuses the same (`LocalBlobs::store_new`). `base_url` is this deployment's
    /// public URL (local files only).
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
        base_url: &str,
    ) -> anyhow::Result<PresignedUpload> {
        match self {
            Blobs::S3(s3) => s3.presign_put(key, content_type, size, ttl).await,
            Blobs::Local(local) => Ok(local.presign_put(key, content_type, size, ttl, base_url)),
        }
    }

    /// A URL to download `key`, valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration, base_url: &str) -> anyhow::Result<String> {
        match self {
            Blobs::S3(s3) => s3.presign_get(key, ttl).await,
            Blobs::Local(local) => Ok(local.presign_get(key, ttl, base_url)),
        }
    }

    /// The stored object's size, or `None` when nothing is stored under `key`.
    pub async fn head(&self, key: &str) -> anyhow::Result<Option<ObjectInfo>> {
        match self {
            Blobs::S3(s3) => s3.head(key).await,
            Blobs::Local(local) => local.head(key).await,
        }
    }

    /// Up to the first `n` bytes of the object (for sniffing its type).
    pub async fn read_prefix(&self, key: &str, n: usize) -> anyhow::Result<Vec<u8>> {
        match self {
            Blobs::S3(s3) => s3.read_prefix(key, n).await,
            Blobs::Local(local) => local.read_prefix(key, n).await,
        }
    }

    /// Deletes the object; deleting what is not there succeeds.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Blobs::S3(s3) => s3.delete(key).await,
            Blobs::Local(local) => local.delete(key).await,
        }
    }

    /// Makes the object at `from` (an upload that passed its check) available at `to`, a key no
    /// upload URL is signed for, with `content_type` and a short public cache lifetime
    /// (`PUBLISHED_CACHE_CONTROL`). On S3 a server-side copy: the upload stays where it was, so
    /// that its URL, still valid for a while, cannot create it again (the bucket's lifecycle
    /// removes uploads a day later). Locally the file moves: the local store refuses any upload
    /// to an asset that is no longer pending.
    pub async fn publish(&self, from: &str, to: &str, content_type: &str) -> anyhow::Result<()> {
        match self {
            Blobs::S3(s3) => s3.copy(from, to, content_type).await,
            Blobs::Local(local) => local.rename(from, to).await,
        }
    }

    /// The object key as the outside sees it (with the configured prefix), for CDN URLs.
    pub fn public_key(&self, key: &str) -> String {
        match self {
            Blobs::S3(s3) => format!("{}{key}", s3.prefix),
            Blobs::Local(_) => key.to_owned(),
        }
    }
}

/// S3 through aws-sdk-s3.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    presigner: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Blobs {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn presign_put(&self, key: &str, content_type: &str, size: u64, ttl: Duration) -> anyhow::Result<PresignedUpload> {
        let length = i64::try_from(size).context("size out of range")?;
        let presigned = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(content_type)
            .content_length(length)
            .if_none_match("*")
            .presigned(PresigningConfig::expires_in(ttl).context("presigning lifetime")?)
            .await
            .context("presigning an S3 upload")?;
        let mut headers: BTreeMap<String, String> = presigned.headers().map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect();
        // Signed in, so the client must send them as they are.
        headers.insert("content-type".into(), content_type.to_owned());
        headers.insert("content-length".into(), size.to_string());
        headers.insert("if-none-match".into(), "*".into());
        Ok(PresignedUpload { url: presigned.uri().to_owned(), headers })
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> anyhow::Result<String> {
        let presigned = self
            .presigner
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .presigned(PresigningConfig::expires_in(ttl).context("presigning lifetime")?)
            .await
            .context("presigning an S3 download")?;
        Ok(presigned.uri().to_owned())
    }

    async fn head(&self, key: &str) -> anyhow::Result<Option<ObjectInfo>> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(key)).send().await {
            Ok(out) => Ok(Some(ObjectInfo { size: u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0) })),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_error(err, "S3 HeadObject")),
        }
    }

    async fn read_prefix(&self, key: &str, n: usize) -> anyhow::Result<Vec<u8>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .range(format!("bytes=0-{}", n - 1))
            .send()
            .await
            .map_err(|err| s3_error(err, "S3 GetObject"))?;
        let bytes = out.body.collect().await.map_err(|err| unreachable_storage("reading an S3 object", &err))?.into_bytes();
        Ok(bytes[..bytes.len().min(n)].to_vec())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client.delete_object().bucket(&self.bucket).key(self.key(key)).send().await.map_err(|err| s3_error(err, "S3 DeleteObject"))?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str, content_type: &str) -> anyhow::Result<()> {
        // Keys are made of lowercase letters, digits, '-' and '/' (uploads), nothing to escape.
        let source = format!("{}/{}", self.bucket, self.key(from));
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(self.key(to))
            .copy_source(source)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type(content_type)
            .cache_control(PUBLISHED_CACHE_CONTROL)
            .send()
            .await
            .map_err(|err| s3_error(err, "S3 CopyObject"))?;
        Ok(())
    }
}

/// How long a CDN or browser may keep a published object: a deleted or taken-down asset stops
/// being served within this long, without a CDN invalidation per deletion (which CloudFront
/// charges for and rate-limits); the CDN revalidates with S3 after it, cheaply.
pub const PUBLISHED_CACHE_CONTROL: &str = "public, max-age=300";

/// An S3 call's error, marked as an outage (`crate::error::Unreachable`: a 503 on request paths,
/// retried without counting by event consumers) when S3 did not answer or answered with a 5xx
/// (`SlowDown`, `InternalError`); any other stays a plain error.
fn s3_error<E>(err: aws_sdk_s3::error::SdkError<E>, what: &'static str) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let down = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    };
    if down { unreachable_storage(what, &aws_sdk_s3::error::DisplayErrorContext(&err)) } else { anyhow::Error::new(err).context(what) }
}

fn unreachable_storage(what: &str, err: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(crate::error::Unreachable { dependency: crate::error::Dependency::Storage, detail: format!("{what}: {err}") })
}

/// Files under a folder, with URLs signed by HMAC-SHA256.
#[derive(Clone)]
pub struct LocalBlobs {
    dir: PathBuf,
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for LocalBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlobs").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What a signed local upload URL allows, once its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadGrant {
    /// The only content type accepted.
    pub content_type: String,
    /// The exact size accepted.
    pub size: u64,
}

/// Why a signed local URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// Missing or wrong signature, or a different key, type or size than signed.
    BadSignature,
    /// Past its expiry.
    Expired,
}

/// The route Guildhall serves local files under.
pub const LOCAL_BLOB_ROUTE: &str = "/v1/blobs";

impl LocalBlobs {
    /// A store over `dir` signing with `key` (tests; `Blobs::connect` otherwise).
    pub fn new(dir: PathBuf, key: Vec<u8>) -> Self {
        Self { dir, key: Arc::new(key) }
    }

    /// The MAC over `parts`, each ended by a newline so that no two lists sign alike.
    fn mac(&self, parts: &[&str]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn sign(&self, parts: &[&str]) -> String {
        hex(&self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&str], signature: &str) -> bool {
        unhex(signature).is_some_and(|bytes| self.mac(parts).verify_slice(&bytes).is_ok())
    }

    fn presign_put(&self, key: &str, content_type: &str, size: u64, ttl: Duration, base_url: &str) -> PresignedUpload {
        let expires = crate::time::now_unix() + ttl.as_secs();
        let (size_text, expires_text) = (size.to_string(), expires.to_string());
        let signature = self.sign(&["PUT", key, content_type, &size_text, &expires_text]);
        let url = format!("{base_url}{LOCAL_BLOB_ROUTE}/{key}?expires={expires}&size={size}&signature={signature}");
        // `if-none-match` as S3's URLs carry it, so that clients send the same headers to both;
        // the local store refuses a second upload regardless (`store_new`).
        let headers = BTreeMap::from([
            ("content-type".to_owned(), content_type.to_owned()),
            ("content-length".to_owned(), size_text),
            ("if-none-match".to_owned(), "*".to_owned()),
        ]);
        PresignedUpload { url, headers }
    }

    fn presign_get(&self, key: &str, ttl: Duration, base_url: &str) -> String {
        let expires = crate::time::now_unix() + ttl.as_secs();
        let signature = self.sign(&["GET", key, &expires.to_string()]);
        format!("{base_url}{LOCAL_BLOB_ROUTE}/{key}?expires={expires}&signature={signature}")
    }

    /// Checks a signed upload URL for `key` sent with `content_type`: what it allows, or why not.
    pub fn check_put(&self, key: &str, content_type: &str, size: u64, expires: u64, signature: &str) -> Result<UploadGrant, UrlRefusal> {
        if !self.verify(&["PUT", key, content_type, &size.to_string(), &expires.to_string()], signature) {
            return Err(UrlRefusal::BadSignature);
        }
        if crate::time::now_unix() > expires {
            return Err(UrlRefusal::Expired);
        }
        Ok(UploadGrant { content_type: content_type.to_owned(), size })
    }

    /// Checks a signed download URL for `key`.
    pub fn check_get(&self, key: &str, expires: u64, signature: &str) -> Result<(), UrlRefusal> {
        if !self.verify(&["GET", key, &expires.to_string()], signature) {
            return Err(UrlRefusal::BadSignature);
        }
        if crate::time::now_unix() > expires {
            return Err(UrlRefusal::Expired);
        }
        Ok(())
    }

    /// The file of `key`, if `key` is well-formed.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let valid = !key.is_empty()
            && key.split('/').all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        valid.then(|| self.dir.join(key))
    }

    /// Moves the file of `from` to `to` (publishing an upload).
    async fn rename(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let (from, to) = (self.path(from).context("malformed blob key")?, self.path(to).context("malformed blob key")?);
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
        }
        match tokio::fs::rename(&from, &to).await {
            Ok(()) => Ok(()),
            // Moved by an earlier attempt that failed after it.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && tokio::fs::try_exists(&to).await.unwrap_or(false) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("moving {} to {}", from.display(), to.display())),
        }
    }

    /// Puts the finished upload `staging` at `key` unless an object is there already: false then
    /// (the staging file is removed either way). A hard link fails when its target exists, so of
    /// two uploads racing for one key exactly one wins.
    pub async fn store_new(&self, staging: &std::path::Path, key: &str) -> anyhow::Result<bool> {
        let path = self.path(key).context("malformed blob key")?;
        let linked = tokio::fs::hard_link(staging, &path).await;
        let _ = tokio::fs::remove_file(staging).await;
        match linked {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err).with_context(|| format!("storing {}", path.display())),
        }
    }

    /// Where an upload of `key` is written before it is renamed into place, so that a reader never
    /// sees half a file.
    pub fn staging_path(&self, key: &str) -> Option<PathBuf> {
        let path = self.path(key)?;
        let name = format!(".{}.{}.part", path.file_name()?.to_string_lossy(), uuid::Uuid::now_v7().simple());
        Some(path.with_file_name(name))
    }

    async fn head(&self, key: &str) -> anyhow::Result<Option<ObjectInfo>> {
        let path = self.path(key).context("malformed blob key")?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(ObjectInfo { size: meta.len() })),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    async fn read_prefix(&self, key: &str, n: usize) -> anyhow::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let path = self.path(key).context("malformed blob key")?;
        let file = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
        let mut out = Vec::with_capacity(n);
        file.take(n as u64).read_to_end(&mut out).await.with_context(|| format!("reading {}", path.display()))?;
        Ok(out)
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key).context("malformed blob key")?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("deleting {}", path.display())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Reads the URL-signing key kept at `path`, generating 32 random bytes there on first use.
fn load_or_generate_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => unhex(text.trim()).filter(|k| k.len() >= 16).with_context(|| format!("{} is not a hex key", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for a URL-signing key: {e}"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            crate::tokens::write_private(path, &hex(&key))?;
            Ok(key.to_vec())
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> LocalBlobs {
        LocalBlobs::new(std::env::temp_dir(), b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn query(url: &str, name: &str) -> String {
        let query = url.split_once('?').expect("query").1;
        query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).expect("parameter").to_owned()
    }

    #[test]
    fn a_signed_upload_url_allows_exactly_what_was_signed() {
        let blobs = store();
        let upload = blobs.presign_put("avatar/abc", "image/png", 10, Duration::from_secs(60), "http://h");
        assert!(upload.url.starts_with("http://h/v1/blobs/avatar/abc?"), "{}", upload.url);
        let expires: u64 = query(&upload.url, "expires").parse().expect("number");
        let signature = query(&upload.url, "signature");
        let grant = blobs.check_put("avatar/abc", "image/png", 10, expires, &signature).expect("valid");
        assert_eq!(grant, UploadGrant { content_type: "image/png".into(), size: 10 });
        assert_eq!(blobs.check_put("avatar/abd", "image/png", 10, expires, &signature), Err(UrlRefusal::BadSignature));
        assert_eq!(blobs.check_put("avatar/abc", "image/jpeg", 10, expires, &signature), Err(UrlRefusal::BadSignature));
        assert_eq!(blobs.check_put("avatar/abc", "image/png", 11, expires, &signature), Err(UrlRefusal::BadSignature));
        assert_eq!(blobs.check_put("avatar/abc", "image/png", 10, expires + 1, &signature), Err(UrlRefusal::BadSignature));
        assert_eq!(blobs.check_put("avatar/abc", "image/png", 10, expires, "zz"), Err(UrlRefusal::BadSignature));
        let other = LocalBlobs::new(std::env::temp_dir(), b"another key, another deployment".to_vec());
        assert_eq!(other.check_put("avatar/abc", "image/png", 10, expires, &signature), Err(UrlRefusal::BadSignature));
    }

    #[test]
    fn an_expired_url_is_refused() {
        let blobs = store();
        let past = crate::time::now_unix() - 1;
        let signature = blobs.sign(&["GET", "replay/x", &past.to_string()]);
        assert_eq!(blobs.check_get("replay/x", past, &signature), Err(UrlRefusal::Expired));
        let url = blobs.presign_get("replay/x", Duration::from_secs(60), "");
        let expires: u64 = query(&url, "expires").parse().expect("number");
        assert_eq!(blobs.check_get("replay/x", expires, &query(&url, "signature")), Ok(()));
    }

    #[test]
    fn keys_cannot_leave_the_folder() {
        let blobs = store();
        assert!(blobs.path("avatar/0192-abc").is_some());
        for bad in ["", "../etc/passwd", "avatar/../../x", "/abs", "avatar//x", "Avatar/x", "avatar/x.png", "a/b\\c"] {
            assert!(blobs.path(bad).is_none(), "{bad:?}");
        }
    }
}
