//! Media metadata's storage (the bytes are files on disk): column family
//! `media`, owned here.
//!
//! - `media`: media id → [`MediaRecord`]

use super::MediaRecord;
use crate::{
    error::Result,
    storage::{Cf, Db},
};

pub(super) fn media(db: &Db, media_id: &str) -> Result<Option<MediaRecord>> {
    Ok(db.get_json(Cf::Media, media_id.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_media(db: &Db, media_id: &str, record: &MediaRecord) -> Result<()> {
    Ok(db.put_json(Cf::Media, media_id.as_bytes(), record)?)
}
