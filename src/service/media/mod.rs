//! Media: files kept on disk under `<database.path>/media`, their metadata
//! in RocksDB. A file is written and fsynced before its record exists, so
//! a recorded mxc URI always has its bytes.

mod data;

use std::{io::Write, path::PathBuf, sync::Arc};

use ruma::{OwnedMxcUri, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    storage::Db,
    util,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    pub content_type: String,
    pub filename: Option<String>,
    pub size: u64,
    pub uploader: ruma::OwnedUserId,
    pub created_at: u64,
}

pub struct Media {
    db: Arc<Db>,
    dir: PathBuf,
    server_name: ruma::OwnedServerName,
}

/// Types a browser may show inline; anything else is served as an attachment
/// so uploaded HTML or SVG cannot run script in the server's origin.
const INLINE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
    "text/plain",
];

pub fn is_inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

impl Media {
    pub fn new(db: Arc<Db>, dir: PathBuf, server_name: ruma::OwnedServerName) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { db, dir, server_name })
    }

    fn path(&self, media_id: &str) -> PathBuf {
        self.dir.join(&media_id[..2]).join(media_id)
    }

    pub fn upload(
        &self,
        uploader: &UserId,
        content_type: Option<String>,
        filename: Option<String>,
        bytes: &[u8],
    ) -> Result<OwnedMxcUri> {
        let media_id = util::random_string(24);
        let path = self.path(&media_id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("media paths have a parent"))?;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write().map_err(|e| Error::internal(format!("writing media {}: {e}", path.display())))?;
        let record = MediaRecord {
            content_type: content_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename: filename.filter(|f| !f.is_empty()),
            size: bytes.len() as u64,
            uploader: uploader.to_owned(),
            created_at: util::now_ms(),
        };
        data::save_media(&self.db, &media_id, &record)?;
        Ok(OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name)))
    }

    /// The record and bytes of local media, or `M_NOT_FOUND`.
    pub fn get(&self, server_name: &ruma::ServerName, media_id: &str) -> Result<(MediaRecord, Vec<u8>)> {
        let not_found = || Error::not_found("No such media on this server.");
        if server_name != self.server_name || media_id.len() < 2 || !media_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(not_found());
        }
        let record = data::media(&self.db, media_id)?.ok_or_else(not_found)?;
        let bytes = std::fs::read(self.path(media_id))
            .map_err(|e| Error::internal(format!("reading media {media_id}: {e}")))?;
        Ok((record, bytes))
    }
}
