//! Media upload and download (authenticated `/client/v1/media` and the
//! legacy `/media/v3` paths).

use ruma::{
    UInt,
    api::client::{authenticated_media, media},
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::Result,
    service::media::{MediaRecord, is_inline},
};

pub(crate) fn disposition(record: &MediaRecord, filename: Option<String>) -> ContentDisposition {
    let kind = if is_inline(&record.content_type) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    ContentDisposition::new(kind).with_filename(filename.or_else(|| record.filename.clone()))
}

pub async fn upload(
    state: AppState,
    req: Ruma<media::create_content::v3::Request>,
) -> Result<media::create_content::v3::Response> {
    blocking(&state, move |s| {
        let body = req.body;
        let uploader = &req.session.expect("authenticated").user_id;
        s.user_limits.check(uploader, crate::service::ratelimit::UserAction::Upload)?;
        let uri = s.media.upload(uploader, body.content_type, body.filename, &body.file)?;
        Ok(media::create_content::v3::Response::new(uri))
    })
    .await
}

pub async fn config(
    state: AppState,
    _: Ruma<authenticated_media::get_media_config::v1::Request>,
) -> Result<authenticated_media::get_media_config::v1::Response> {
    Ok(authenticated_media::get_media_config::v1::Response::new(UInt::new_saturating(
        state.settings.raw.limits.max_upload_bytes as u64,
    )))
}

#[allow(deprecated)]
pub async fn legacy_config(
    state: AppState,
    _: Ruma<media::get_media_config::v3::Request>,
) -> Result<media::get_media_config::v3::Response> {
    Ok(media::get_media_config::v3::Response::new(UInt::new_saturating(
        state.settings.raw.limits.max_upload_bytes as u64,
    )))
}

pub async fn download(
    state: AppState,
    req: Ruma<authenticated_media::get_content::v1::Request>,
) -> Result<authenticated_media::get_content::v1::Response> {
    blocking(&state, move |s| {
        let (record, bytes) = s.media.get(&req.body.server_name, &req.body.media_id)?;
        let disposition = disposition(&record, None);
        Ok(authenticated_media::get_content::v1::Response::new(bytes, record.content_type, disposition))
    })
    .await
}

pub async fn download_as(
    state: AppState,
    req: Ruma<authenticated_media::get_content_as_filename::v1::Request>,
) -> Result<authenticated_media::get_content_as_filename::v1::Response> {
    blocking(&state, move |s| {
        let (record, bytes) = s.media.get(&req.body.server_name, &req.body.media_id)?;
        let disposition = disposition(&record, Some(req.body.filename.clone()));
        Ok(authenticated_media::get_content_as_filename::v1::Response::new(bytes, record.content_type, disposition))
    })
    .await
}

/// Thumbnails of images are the original file: porch does not scale images.
/// Other media has no thumbnail.
pub async fn thumbnail(
    state: AppState,
    req: Ruma<authenticated_media::get_content_thumbnail::v1::Request>,
) -> Result<authenticated_media::get_content_thumbnail::v1::Response> {
    blocking(&state, move |s| {
        let (record, bytes) = s.media.get(&req.body.server_name, &req.body.media_id)?;
        if !record.content_type.starts_with("image/") {
            return Err(crate::error::Error::not_found("This media is not an image and has no thumbnail."));
        }
        let disposition = disposition(&record, None);
        Ok(authenticated_media::get_content_thumbnail::v1::Response::new(bytes, record.content_type, disposition))
    })
    .await
}

/// The unauthenticated download serves nothing: media is only for people
/// signed in (`/_matrix/client/v1/media`) and for servers
/// (`/_matrix/federation/v1/media`), as Synapse does once it freezes
/// unauthenticated media. porch keeps no media of other servers.
#[allow(deprecated)]
pub async fn legacy_download(
    _: AppState,
    _: Ruma<media::get_content::v3::Request>,
) -> Result<media::get_content::v3::Response> {
    Err(crate::error::Error::not_found(
        "This server serves media only to signed-in users: use /_matrix/client/v1/media/download with an access token.",
    ))
}
