//! On embedded storage Guildhall stands in for S3: it accepts the `PUT` of a signed upload URL and
//! serves the `GET` of a signed download URL. Unlike moto, it holds an upload to the signed size.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures_util::StreamExt;
use platform::blobs::{Blobs, LocalBlobs, UrlRefusal};
use platform::http::Query;
use platform::{ApiError, ApiResult};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::UploadsState;
use crate::store::{self, State as AssetState};

/// The local blob routes.
pub fn routes() -> Router<UploadsState> {
    Router::new().route("/v1/blobs/{*key}", put(upload).get(download))
}

/// The signature parameters of a local blob URL.
#[derive(Debug, Deserialize)]
pub struct Signed {
    expires: u64,
    signature: String,
    size: Option<u64>,
}

fn local(state: &UploadsState) -> ApiResult<&LocalBlobs> {
    match &state.blobs {
        Blobs::Local(local) => Ok(local),
        Blobs::S3(_) => Err(ApiError::NotFound("no such endpoint".into())),
    }
}

fn refused(refusal: UrlRefusal) -> ApiError {
    match refusal {
        UrlRefusal::BadSignature => ApiError::client(
            StatusCode::FORBIDDEN,
            "signature_invalid",
            "the URL's signature does not match this request (key, content type and size are signed)",
        ),
        UrlRefusal::Expired => ApiError::client(StatusCode::FORBIDDEN, "url_expired", "this URL has expired; ask for a new one"),
    }
}

/// Stores the body of a signed upload, which must have exactly the signed type and size. The
/// file appears only once complete.
async fn upload(
    State(state): State<UploadsState>,
    Path(key): Path<String>,
    Query(signed): Query<Signed>,
    request: Request,
) -> ApiResult<StatusCode> {
    let blobs = local(&state)?;
    let headers = request.headers();
    let content_type = header_text(headers, header::CONTENT_TYPE).unwrap_or_default();
    let size = signed.size.ok_or_else(|| refused(UrlRefusal::BadSignature))?;
    let grant = blobs.check_put(&key, &content_type, size, signed.expires, &signed.signature).map_err(refused)?;
    match header_text(headers, header::CONTENT_LENGTH).map(|v| v.parse::<u64>()) {
        None => return Err(ApiError::client(StatusCode::LENGTH_REQUIRED, "length_required", "send Content-Length")),
        Some(Ok(length)) if length > grant.size => return Err(ApiError::PayloadTooLarge),
        Some(Ok(length)) if length == grant.size => {}
        Some(_) => return Err(refused(UrlRefusal::BadSignature)),
    }
    // A URL uploads once, and only while its asset waits for it: not after completion, nor
    // after deletion, however long the URL stays valid.
    let asset = match key.strip_prefix(store::UPLOAD_PREFIX) {
        Some(object_key) => store::by_object_key(&state.db, object_key).await?,
        None => None,
    };
    if !asset.is_some_and(|a| a.state == AssetState::Pending) {
        return Err(ApiError::Conflict { code: "upload_closed", message: "this asset takes no upload any more".into() });
    }
    let (Some(path), Some(staging)) = (blobs.path(&key), blobs.staging_path(&key)) else {
        return Err(ApiError::NotFound("no such object".into()));
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(anyhow::Error::from)?;
    }
    if let Err(err) = write_body(request.into_body(), &staging, grant.size).await {
        let _ = tokio::fs::remove_file(&staging).await;
        return Err(err);
    }
    if !blobs.store_new(&staging, &key).await? {
        return Err(already_uploaded());
    }
    Ok(StatusCode::OK)
}

/// 412, as S3 answers a second `PUT` of a URL signed with `If-None-Match: *`.
fn already_uploaded() -> ApiError {
    ApiError::client(StatusCode::PRECONDITION_FAILED, "already_uploaded", "this upload URL was used already")
}

/// Streams `body` into `path`, refusing more than `size` bytes or fewer.
async fn write_body(body: Body, path: &std::path::Path, size: u64) -> ApiResult<()> {
    let mut file = tokio::fs::File::create(path).await.map_err(anyhow::Error::from)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid("body", "the upload was cut off"))?;
        total += chunk.len() as u64;
        if total > size {
            return Err(ApiError::PayloadTooLarge);
        }
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    if total != size {
        return Err(ApiError::invalid("body", format!("the body has {total} bytes; the URL was signed for {size}")));
    }
    file.sync_all().await.map_err(anyhow::Error::from)?;
    Ok(())
}

/// Serves a ready asset's file through a signed download URL.
async fn download(State(state): State<UploadsState>, Path(key): Path<String>, Query(signed): Query<Signed>) -> ApiResult<Response> {
    let blobs = local(&state)?;
    blobs.check_get(&key, signed.expires, &signed.signature).map_err(refused)?;
    let asset = store::by_object_key(&state.db, &key).await?.filter(|a| a.state == AssetState::Ready);
    let (Some(asset), Some(path)) = (asset, blobs.path(&key)) else {
        return Err(ApiError::NotFound("no such object".into()));
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound("no such object".into())),
        Err(err) => return Err(anyhow::Error::from(err).into()),
    };
    let length = file.metadata().await.map_err(anyhow::Error::from)?.len();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&asset.content_type).map_err(anyhow::Error::from)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    Ok(response)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}
