//! Client-server API handlers, one module per area.

pub mod account;
pub mod account_data;
pub mod backup;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod events;
pub mod keys;
pub mod legacy;
pub mod media;
pub mod misc;
pub mod profile;
pub mod pushers;
pub mod relations;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod spaces;
pub mod sync;

use axum::routing::{get, post, put};
use http::Method;
use ruma::api::client as c;

use crate::api::Routes;

// The legacy media paths are deprecated in the spec but still used by clients.
#[allow(deprecated)]
pub fn register(r: &mut Routes) {
    // The deprecated views before /sync (ruma has no types for most of them).
    for version in ["r0", "v3"] {
        let base = format!("/_matrix/client/{version}");
        r.raw(&format!("{base}/pushrules/global/{{kind}}/"), Method::GET, get(account_data::push_rules_of_kind))
            .raw(&format!("{base}/pushrules/global/{{kind}}/"), Method::PUT, put(account_data::push_rule_without_id))
            .raw(&format!("{base}/pushrules/"), Method::PUT, put(account_data::push_rule_without_id));
        r.raw(&format!("{base}/initialSync"), Method::GET, get(legacy::initial_sync))
            .raw(&format!("{base}/rooms/{{room_id}}/initialSync"), Method::GET, get(legacy::room_initial_sync))
            .raw(&format!("{base}/events"), Method::GET, get(legacy::events))
            .raw(&format!("{base}/events/{{event_id}}"), Method::GET, get(legacy::event));
    }
    r.ruma::<c::discovery::get_supported_versions::Request, _, _>(discovery::versions)
        .ruma::<c::discovery::discover_homeserver::Request, _, _>(discovery::well_known_client)
        .raw("/.well-known/matrix/server", Method::GET, get(discovery::well_known_server))
        // Written out by hand: ruma leaves out capabilities at their default
        // (`m.change_password` enabled), and clients and sytest look for them.
        .raw("/_matrix/client/v3/capabilities", Method::GET, get(discovery::capabilities))
        .raw("/_matrix/client/r0/capabilities", Method::GET, get(discovery::capabilities))
        .raw("/_matrix/client/v3/voip/turnServer", Method::GET, get(misc::turn_server))
        .raw("/_matrix/client/r0/voip/turnServer", Method::GET, get(misc::turn_server))
        .raw("/_matrix/client/v3/search", Method::POST, axum::routing::post(search::search))
        .raw("/_matrix/client/r0/search", Method::POST, axum::routing::post(search::search))
        // accounts
        // Served through JSON: ruma writes `"device_id": null` when
        // `inhibit_login` is set, and clients (and sytest) expect no key.
        .raw("/_matrix/client/v3/register", Method::POST, post(account::register_json))
        .raw("/_matrix/client/r0/register", Method::POST, post(account::register_json))
        .ruma::<c::account::get_username_availability::v3::Request, _, _>(account::username_available)
        .ruma::<c::account::check_registration_token_validity::v1::Request, _, _>(account::token_validity)
        .ruma::<c::session::get_login_types::v3::Request, _, _>(account::login_types)
        .ruma::<c::session::login::v3::Request, _, _>(account::login)
        .ruma::<c::session::get_login_token::v1::Request, _, _>(account::get_login_token)
        .ruma::<c::session::logout::v3::Request, _, _>(account::logout)
        .ruma::<c::session::logout_all::v3::Request, _, _>(account::logout_all)
        .ruma::<c::account::whoami::v3::Request, _, _>(account::whoami)
        .ruma::<c::account::request_openid_token::v3::Request, _, _>(account::request_openid_token)
        .ruma::<c::account::change_password::v3::Request, _, _>(account::change_password)
        .ruma::<c::account::deactivate::v3::Request, _, _>(account::deactivate)
        .ruma::<c::device::get_devices::v3::Request, _, _>(account::devices)
        .ruma::<c::device::get_device::v3::Request, _, _>(account::device)
        .ruma::<c::device::update_device::v3::Request, _, _>(account::update_device)
        .ruma::<c::device::delete_device::v3::Request, _, _>(account::delete_device)
        .ruma::<c::device::delete_devices::v3::Request, _, _>(account::delete_devices)
        // profiles
        .ruma::<c::profile::get_profile::v3::Request, _, _>(profile::profile)
        .ruma::<c::profile::get_display_name::v3::Request, _, _>(profile::display_name)
        .ruma::<c::profile::get_avatar_url::v3::Request, _, _>(profile::avatar_url)
        .ruma::<c::profile::set_display_name::v3::Request, _, _>(profile::set_display_name)
        .ruma::<c::profile::set_avatar_url::v3::Request, _, _>(profile::set_avatar_url)
        // rooms and membership
        .ruma::<c::room::create_room::v3::Request, _, _>(rooms::create)
        .ruma::<c::room::upgrade_room::v3::Request, _, _>(rooms::upgrade)
        .ruma::<c::room::report_content::v3::Request, _, _>(reports::event)
        .ruma::<c::room::report_room::v3::Request, _, _>(reports::room)
        .ruma::<c::reporting::report_user::v3::Request, _, _>(reports::user)
        .ruma::<c::room::get_event_by_timestamp::v1::Request, _, _>(events::timestamp_to_event)
        .ruma::<c::relations::get_relating_events::v1::Request, _, _>(relations::all)
        .ruma::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _>(relations::by_rel_type)
        .ruma::<c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
            relations::by_rel_and_event_type,
        )
        .ruma::<c::threads::get_threads::v1::Request, _, _>(relations::threads)
        .ruma::<c::alias::create_alias::v3::Request, _, _>(rooms::put_alias)
        .ruma::<c::alias::get_alias::v3::Request, _, _>(rooms::get_alias)
        .ruma::<c::alias::delete_alias::v3::Request, _, _>(rooms::delete_alias)
        .ruma::<c::room::aliases::v3::Request, _, _>(rooms::room_aliases)
        .ruma::<c::membership::join_room_by_id::v3::Request, _, _>(rooms::join_by_id)
        .ruma::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(rooms::join_by_id_or_alias)
        .ruma::<c::membership::invite_user::v3::Request, _, _>(rooms::invite)
        .ruma::<c::membership::leave_room::v3::Request, _, _>(rooms::leave)
        .ruma::<c::membership::forget_room::v3::Request, _, _>(rooms::forget)
        .ruma::<c::membership::kick_user::v3::Request, _, _>(rooms::kick)
        .ruma::<c::membership::ban_user::v3::Request, _, _>(rooms::ban)
        .ruma::<c::membership::unban_user::v3::Request, _, _>(rooms::unban)
        .ruma::<c::knock::knock_room::v3::Request, _, _>(rooms::knock)
        .ruma::<c::membership::get_member_events::v3::Request, _, _>(rooms::members)
        .raw("/_matrix/client/v3/rooms/{room_id}/joined_members", Method::GET, get(rooms::joined_members))
        .raw("/_matrix/client/r0/rooms/{room_id}/joined_members", Method::GET, get(rooms::joined_members))
        .ruma::<c::membership::joined_rooms::v3::Request, _, _>(rooms::joined_rooms)
        .ruma::<c::room::get_summary::v1::Request, _, _>(rooms::summary)
        .ruma::<c::space::get_hierarchy::v1::Request, _, _>(spaces::hierarchy)
        // events
        .ruma::<c::message::send_message_event::v3::Request, _, _>(events::send_message)
        .ruma::<c::state::send_state_event::v3::Request, _, _>(events::send_state)
        .ruma::<c::state::get_state_event_for_key::v3::Request, _, _>(events::state_for_key)
        .ruma::<c::state::get_state_events::v3::Request, _, _>(events::all_state)
        .ruma::<c::redact::redact_event::v3::Request, _, _>(events::redact)
        .raw(
            "/_matrix/client/{version}/rooms/{room_id}/send/{event_type}",
            Method::POST,
            post(events::send_message_without_txn),
        )
        .raw(
            "/_matrix/client/{version}/rooms/{room_id}/redact/{event_id}",
            Method::POST,
            post(events::redact_without_txn),
        )
        .ruma::<c::room::get_room_event::v3::Request, _, _>(events::event)
        .ruma::<c::message::get_message_events::v3::Request, _, _>(events::messages)
        .ruma::<c::context::get_context::v3::Request, _, _>(events::context)
        // sync
        // Written out by hand: ruma leaves out empty sections that clients
        // and sytest look for (`limited`, `state`, `ephemeral`, …).
        .raw("/_matrix/client/v3/sync", Method::GET, get(sync::sync))
        .raw("/_matrix/client/r0/sync", Method::GET, get(sync::sync))
        .ruma::<c::sync::sync_events::v5::Request, _, _>(sync::sliding_sync)
        .ruma::<c::filter::create_filter::v3::Request, _, _>(sync::create_filter)
        .ruma::<c::filter::get_filter::v3::Request, _, _>(sync::get_filter)
        // ephemeral
        .ruma::<c::typing::create_typing_event::v3::Request, _, _>(ephemeral::typing)
        .ruma::<c::receipt::create_receipt::v3::Request, _, _>(ephemeral::create_receipt)
        .ruma::<c::read_marker::set_read_marker::v3::Request, _, _>(ephemeral::read_markers)
        // account data, tags, push rules
        .ruma::<c::config::set_global_account_data::v3::Request, _, _>(account_data::set_global)
        .ruma::<c::config::get_global_account_data::v3::Request, _, _>(account_data::get_global)
        .ruma::<c::config::set_room_account_data::v3::Request, _, _>(account_data::set_room)
        .ruma::<c::config::get_room_account_data::v3::Request, _, _>(account_data::get_room)
        .ruma::<c::tag::get_tags::v3::Request, _, _>(account_data::get_tags)
        .ruma::<c::tag::create_tag::v3::Request, _, _>(account_data::put_tag)
        .ruma::<c::tag::delete_tag::v3::Request, _, _>(account_data::delete_tag)
        .ruma::<c::push::get_pushrules_all::v3::Request, _, _>(account_data::push_rules)
        .ruma::<c::push::get_pushrules_global_scope::v3::Request, _, _>(account_data::push_rules_global)
        .ruma::<c::push::get_pushrule::v3::Request, _, _>(account_data::push_rule)
        .ruma::<c::push::get_pushrule_actions::v3::Request, _, _>(account_data::push_rule_actions)
        .ruma::<c::push::get_pushrule_enabled::v3::Request, _, _>(account_data::push_rule_enabled)
        .ruma::<c::push::set_pushrule::v3::Request, _, _>(account_data::set_push_rule)
        .ruma::<c::push::delete_pushrule::v3::Request, _, _>(account_data::delete_push_rule)
        .ruma::<c::push::set_pushrule_enabled::v3::Request, _, _>(account_data::set_push_rule_enabled)
        .ruma::<c::push::set_pushrule_actions::v3::Request, _, _>(account_data::set_push_rule_actions)
        // directories
        .ruma::<c::directory::get_public_rooms::v3::Request, _, _>(directory::get_public)
        .ruma::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(directory::post_public)
        .ruma::<c::directory::get_room_visibility::v3::Request, _, _>(directory::get_visibility)
        .ruma::<c::directory::set_room_visibility::v3::Request, _, _>(directory::set_visibility)
        .ruma::<c::user_directory::search_users::v3::Request, _, _>(directory::search_users)
        // end-to-end encryption
        .ruma::<c::keys::upload_keys::v3::Request, _, _>(keys::upload)
        .ruma::<c::keys::get_keys::v3::Request, _, _>(keys::query)
        .ruma::<c::keys::claim_keys::v3::Request, _, _>(keys::claim)
        .ruma::<c::keys::get_key_changes::v3::Request, _, _>(keys::changes)
        .ruma::<c::keys::upload_signing_keys::v3::Request, _, _>(keys::upload_signing)
        .ruma::<c::keys::upload_signatures::v3::Request, _, _>(keys::upload_signatures)
        .ruma::<c::to_device::send_event_to_device::v3::Request, _, _>(keys::send_to_device)
        // start-up odds and ends
        .ruma::<c::presence::set_presence::v3::Request, _, _>(misc::set_presence)
        .ruma::<c::presence::get_presence::v3::Request, _, _>(misc::get_presence)
        .ruma::<c::push::get_pushers::v3::Request, _, _>(pushers::get)
        .ruma::<c::push::set_pusher::v3::Request, _, _>(pushers::set)
        .raw("/_matrix/client/v3/notifications", Method::GET, get(pushers::notifications))
        .raw("/_matrix/client/r0/notifications", Method::GET, get(pushers::notifications))
        .ruma::<c::thirdparty::get_protocols::v3::Request, _, _>(misc::protocols)
        .ruma::<c::account::get_3pids::v3::Request, _, _>(misc::threepids)
        .ruma::<ruma::api::federation::openid::get_openid_userinfo::v1::Request, _, _>(
            crate::api::federation::openid_userinfo,
        )
        // key backup
        .ruma::<c::backup::create_backup_version::v3::Request, _, _>(backup::create_version)
        .ruma::<c::backup::get_latest_backup_info::v3::Request, _, _>(backup::latest_version)
        .ruma::<c::backup::get_backup_info::v3::Request, _, _>(backup::get_version)
        .ruma::<c::backup::update_backup_version::v3::Request, _, _>(backup::update_version)
        .ruma::<c::backup::delete_backup_version::v3::Request, _, _>(backup::delete_version)
        .ruma::<c::backup::add_backup_keys::v3::Request, _, _>(backup::put_keys)
        .ruma::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(backup::put_room_keys)
        .ruma::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(backup::put_session_key)
        .ruma::<c::backup::get_backup_keys::v3::Request, _, _>(backup::get_keys)
        .ruma::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(backup::get_room_keys)
        .ruma::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(backup::get_session_key)
        .ruma::<c::backup::delete_backup_keys::v3::Request, _, _>(backup::delete_keys)
        .ruma::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(backup::delete_room_keys)
        .ruma::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(backup::delete_session_key)
        // media
        .ruma::<c::media::create_content::v3::Request, _, _>(media::upload)
        .ruma::<c::authenticated_media::get_media_config::v1::Request, _, _>(media::config)
        .ruma::<c::media::get_media_config::v3::Request, _, _>(media::legacy_config)
        .ruma::<c::authenticated_media::get_content::v1::Request, _, _>(media::download)
        .ruma::<c::authenticated_media::get_content_as_filename::v1::Request, _, _>(media::download_as)
        .ruma::<c::authenticated_media::get_content_thumbnail::v1::Request, _, _>(media::thumbnail)
        .ruma::<c::media::get_content::v3::Request, _, _>(media::legacy_download);
}
