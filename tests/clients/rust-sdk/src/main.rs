//! matrix-rust-sdk (the code Element X runs) against a porch server, as
//! Element X uses it: `SyncService` (simplified sliding sync for the room
//! list, a second connection for encryption), `RoomListService`, timelines.
//!
//! Set up by the `rust_sdk` integration test, which passes:
//! - `PORCH_URL`: the server's client API;
//! - `PORCH_PASSWORD`: the password of `alice` and `bob`;
//! - `PORCH_ROOMS`: `name=!room:id` pairs, comma-separated, newest activity
//!   first: alice's rooms, the first three plain (the last of them holding
//!   `history 0` … `history 29`), then `secret`, encrypted and shared with bob.
//!
//! Prints one line per step passed; exits non-zero with the reason when a
//! step fails.

#![recursion_limit = "256"]

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use eyeball_im::Vector;
use futures_util::StreamExt;
use matrix_sdk::{
    Client,
    ruma::{OwnedRoomId, RoomId, events::room::message::RoomMessageEventContent},
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::{
    room_list_service::{RoomListItem, filters::new_filter_non_left},
    sync_service::SyncService,
    timeline::{RoomExt, Timeline},
};
use tokio::{sync::watch, time::timeout};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("PORCH_URL").context("PORCH_URL")?;
    let password = std::env::var("PORCH_PASSWORD").context("PORCH_PASSWORD")?;
    let rooms: Vec<(String, OwnedRoomId)> = std::env::var("PORCH_ROOMS")
        .context("PORCH_ROOMS")?
        .split(',')
        .map(|pair| {
            let (name, id) = pair.split_once('=').context("name=id")?;
            Ok((name.to_owned(), OwnedRoomId::try_from(id)?))
        })
        .collect::<Result<_>>()?;
    ensure!(rooms.len() == 4, "four rooms expected");
    let id = |name: &str| rooms.iter().find(|(n, _)| n == name).map(|(_, id)| id.clone()).context("room");

    let alice = login(&url, "alice", &password).await?;
    let bob = login(&url, "bob", &password).await?;
    let alice_sync = SyncService::builder(alice.clone()).build().await?;
    let bob_sync = SyncService::builder(bob.clone()).build().await?;
    alice_sync.start().await;
    bob_sync.start().await;
    step("logged in, both sync services started");

    // The room list, in the order Element X shows it.
    let room_list = alice_sync.room_list_service();
    let all_rooms = room_list.all_rooms().await?;
    let (order_tx, mut order) = watch::channel(Vec::<OwnedRoomId>::new());
    let list_task = tokio::spawn(async move {
        let (entries, controller) = all_rooms.entries_with_dynamic_adapters(50);
        controller.set_filter(Box::new(new_filter_non_left()));
        futures_util::pin_mut!(entries);
        let mut shown: Vector<RoomListItem> = Vector::new();
        while let Some(diffs) = entries.next().await {
            for diff in diffs {
                diff.apply(&mut shown);
            }
            order_tx.send_replace(shown.iter().map(|room| room.room_id().to_owned()).collect());
        }
    });
    let expected: Vec<OwnedRoomId> = rooms.iter().map(|(_, id)| id.clone()).collect();
    wait_for_order(&mut order, &expected).await.context("the room list in recency order")?;
    step(&format!("the room list shows {} rooms, newest activity first", expected.len()));

    // A new message moves its room to the top.
    let history = id(&rooms[2].0)?;
    let room = alice.get_room(&history).context("alice has the history room")?;
    room.send(RoomMessageEventContent::text_plain("bump")).await?;
    let mut moved = vec![history.clone()];
    moved.extend(expected.iter().filter(|r| **r != history).cloned());
    wait_for_order(&mut order, &moved).await.context("a new message moves the room to the top")?;
    step("a new message moved its room to the top");

    // The timeline paginates back to the room's first messages.
    room_list.subscribe_to_rooms(&[&history]).await;
    let timeline = room.timeline().await?;
    let mut reached_start = false;
    for _ in 0..30 {
        if timeline.paginate_backwards(10).await? {
            reached_start = true;
            break;
        }
    }
    ensure!(reached_start, "back-pagination never reached the start of the room");
    let shown = bodies(&timeline).await;
    let wanted: Vec<String> = (0..30).map(|n| format!("history {n}")).chain(["bump".to_owned()]).collect();
    let found: Vec<&String> = shown.iter().filter(|b| wanted.contains(b)).collect();
    ensure!(found == wanted.iter().collect::<Vec<_>>(), "the timeline holds, in order, {wanted:?}; it has {shown:?}");
    step(&format!("the timeline paginated back over {} messages", wanted.len()));

    // An encrypted message, decrypted on the other side.
    let secret = id("secret")?;
    alice.encryption().wait_for_e2ee_initialization_tasks().await;
    bob.encryption().wait_for_e2ee_initialization_tasks().await;
    let alice_room = wait_for_room(&alice, &secret).await?;
    ensure!(alice_room.latest_encryption_state().await?.is_encrypted(), "alice sees the room as encrypted");
    let bob_room = wait_for_room(&bob, &secret).await?;
    bob_sync.room_list_service().subscribe_to_rooms(&[&secret]).await;
    let bob_timeline = Arc::new(bob_room.timeline().await?);
    let text = "the cake is in the fridge";
    alice_room.send(RoomMessageEventContent::text_plain(text)).await?;
    let decrypted = timeout(WAIT, async {
        loop {
            if bodies(&bob_timeline).await.iter().any(|b| b == text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if decrypted.is_err() {
        let items = bob_timeline.items().await;
        let utd = items.iter().filter(|i| i.as_event().is_some_and(|e| e.content().is_unable_to_decrypt())).count();
        bail!("bob never decrypted the message: {} items, {utd} unable to decrypt", items.len());
    }
    step("bob decrypted alice's encrypted message");

    list_task.abort();
    alice_sync.stop().await;
    bob_sync.stop().await;
    Ok(())
}

/// Report a step passed (stdout, for the test) with the time (stderr, beside the SDK's logs).
fn step(what: &str) {
    println!("ok: {what}");
    eprintln!("{:?} ok: {what}", std::time::SystemTime::now());
}

async fn login(url: &str, user: &str, password: &str) -> Result<Client> {
    let client = Client::builder()
        .homeserver_url(url)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .context("the server advertises simplified sliding sync")?;
    client.matrix_auth().login_username(user, password).initial_device_display_name("rust-sdk").await?;
    Ok(client)
}

async fn wait_for_order(order: &mut watch::Receiver<Vec<OwnedRoomId>>, expected: &[OwnedRoomId]) -> Result<()> {
    let seen = timeout(WAIT, order.wait_for(|shown| shown.as_slice() == expected)).await.is_ok_and(|r| r.is_ok());
    if !seen {
        bail!("expected {expected:?}, the list shows {:?}", order.borrow().clone());
    }
    Ok(())
}

async fn wait_for_room(client: &Client, room_id: &RoomId) -> Result<matrix_sdk::Room> {
    timeout(WAIT, async {
        loop {
            if let Some(room) = client.get_room(room_id) {
                return room;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("{} never saw {room_id}", client.user_id().map(|u| u.to_string()).unwrap_or_default()))
}

/// The timeline's message bodies, oldest first.
async fn bodies(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event()?.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}
