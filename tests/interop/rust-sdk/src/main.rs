//! Element X interop for simplified sliding sync (MSC4186), with matrix-rust-sdk 0.18.
//!
//! alice is driven exactly as Element X drives the SDK: password login on a fresh
//! client, `SyncService` (a `RoomListService` sliding sync connection `room-list`
//! plus an `EncryptionSyncService` connection `encryption`), the `all_rooms` room
//! list seen through `entries_with_dynamic_adapters` with Element X's default
//! filter, a room subscription and a `Timeline` for the room she opens. bob uses
//! plain matrix-sdk calls, with a `SyncService` of his own so his keys flow.
//!
//! A passing run proves, step by step:
//! 1. the room list loads (`all_rooms` list with a count; selective, then growing);
//! 2. an invite shows as `Invited` with its name; joining turns it `Joined`;
//! 3. the list is sorted by recency: a new message moves its room to the top;
//! 4. a rename reaches the room's display name in the list;
//! 5. a live message wakes alice's long-poll in under a second;
//! 6. a room alice leaves drops out of the list and stays left;
//! 7. megolm messages decrypt both ways (keys, one-time keys, to-device, device lists);
//! 8. after the server restarts on the same port the SDK recovers (`M_UNKNOWN_POS`
//!    makes it start a new session; a stopped `SyncService` is restarted as Element
//!    X does) and messages flow again.
//!
//! Usage: `estuary-rust-sdk-interop http://127.0.0.1:PORT` (server name `localhost`,
//! open registration with `m.login.dummy`). It prints progress lines, then
//! `restart-now`, then waits for one line on stdin (the harness restarts the server
//! and writes a line), and ends with `interop ok`. Any failure exits non-zero with
//! the reason; every wait is bounded. `RUST_LOG=matrix_sdk=debug` adds SDK logs on
//! stderr. It is run by the black-box test `tests/blackbox/interop.rs`; `.ci/run`
//! builds it (its own workspace and lock file) into the shared `CARGO_TARGET_DIR`.
#![recursion_limit = "256"]

use std::{
    io::Write as _,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::{Stream, StreamExt as _};
use matrix_sdk::{
    Client, Room, RoomState,
    ruma::{
        OwnedRoomId, RoomId, UserId,
        api::{
            client::{
                account::register::v3::Request as RegisterRequest,
                room::create_room::v3::Request as CreateRoomRequest,
                uiaa::{AuthData, Dummy},
            },
            error::ErrorKind,
        },
        events::{
            InitialStateEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                member::MembershipState,
                message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::{
    Timeline, encryption_sync_service,
    eyeball_im::{Vector, VectorDiff},
    room_list_service::{
        self, RoomList, RoomListDynamicEntriesController, RoomListItem, RoomListLoadingState,
        State as RoomListState,
        filters::{BoxedFilterFn, new_filter_all, new_filter_deduplicate_versions, new_filter_non_left},
    },
    sync_service::{Error as SyncError, State as SyncState, SyncService},
    timeline::RoomExt as _,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    sync::mpsc,
    task::JoinHandle,
};

const PASSWORD: &str = "interop-password-1";
/// Bound of an ordinary step (a request, a sync round trip or a few).
const STEP: Duration = Duration::from_secs(15);
/// A live event must reach a long-polling client within this.
const LIVE: Duration = Duration::from_secs(1);
/// Bound for end-to-end encryption and for recovering after the restart.
const RECOVERY: Duration = Duration::from_secs(20);
/// How often waits re-check state that changes without a stream event.
const TICK: Duration = Duration::from_millis(100);
/// Element X's page size: every room fits on the first page.
const PAGE_SIZE: usize = 200;

fn main() {
    let Some(base) = std::env::args().nth(1) else {
        eprintln!("usage: estuary-rust-sdk-interop <homeserver base URL, e.g. http://127.0.0.1:8008>");
        std::process::exit(2);
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // Exit from here rather than by dropping the runtime: the SDK leaves background
    // tasks behind, and a stdin read can't be cancelled, so a drop could hang.
    let outcome = runtime.block_on(run(&base));
    let code = match outcome {
        Ok(()) => {
            println!("interop ok");
            0
        }
        Err(error) => {
            println!("interop failed: {error:#}");
            eprintln!("interop failed: {error:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

async fn run(base: &str) -> Result<()> {
    let suffix = unique_suffix();
    let (alice_name, bob_name) = (format!("alice_{suffix}"), format!("bob_{suffix}"));

    // 1. Accounts, login, sync. alice's account is made elsewhere (a client that
    // does not log in); Element X then logs in with the password on a new client.
    register(&new_client(base).await?, &alice_name, false).await?;
    let bob = new_client(base).await?;
    register(&bob, &bob_name, true).await?;
    let alice = new_client(base).await?;
    let login = alice
        .matrix_auth()
        .login_username(&alice_name, PASSWORD)
        .initial_device_display_name("Element X (Estuary interop)");
    within(STEP, "alice: password login", login).await?;
    // Element X (like the SDK by default) moves to the login response's
    // `well_known` homeserver base URL: it must be where the server answers.
    let moved_to = alice.homeserver();
    if moved_to.as_str().trim_end_matches('/') != base.trim_end_matches('/') {
        println!("note: the login response's well_known moved alice's client to {moved_to}");
        let what = format!("alice: whoami at {moved_to}, the base URL the login's well_known gave");
        within(Duration::from_secs(5), &what, alice.whoami()).await?;
    }
    let alice_id = alice.user_id().context("alice has no user ID after login")?.to_owned();
    let bob_id = bob.user_id().context("bob has no user ID after registering")?.to_owned();

    let mut inbox = Inbox::install(&alice);
    let alice_sync = Arc::new(
        within(STEP, "alice: build SyncService", SyncService::builder(alice.clone()).build()).await?,
    );
    let bob_sync =
        Arc::new(within(STEP, "bob: build SyncService", SyncService::builder(bob.clone()).build()).await?);
    let alice_watch = Watch::spawn("alice", alice_sync.clone());
    let bob_watch = Watch::spawn("bob", bob_sync.clone());
    within(STEP, "start the sync services", async {
        alice_sync.start().await;
        bob_sync.start().await;
        anyhow::Ok(())
    })
    .await?;

    let room_list_service = alice_sync.room_list_service();
    let room_list = within(STEP, "alice: RoomListService::all_rooms", room_list_service.all_rooms()).await?;
    let mut view = RoomListView::new(&room_list)?;
    // Running means two answered requests: the selective range 0..=19, then the growing list.
    wait_until(STEP, "alice's RoomListService to reach Running", async || {
        room_list_service.state().get() == RoomListState::Running
    })
    .await?;
    wait_until(STEP, "alice's room list to be loaded (lists.all_rooms.count)", async || {
        matches!(
            room_list.loading_state().get(),
            RoomListLoadingState::Loaded { maximum_number_of_rooms: Some(_) }
        )
    })
    .await?;
    wait_until(STEP, "bob's RoomListService to reach Running", async || {
        bob_sync.room_list_service().state().get() == RoomListState::Running
    })
    .await?;
    view.pump(Duration::from_millis(300)).await?;
    ensure!(view.items.is_empty(), "a new account's room list shows [{}]", view.describe());
    println!("step 1 ok: {bob_id} registered, {alice_id} logged in with a password; both sync");

    // 2. An invite, then a join.
    let bob_room1 = create_room(&bob, "Bob's room", &alice_id, false).await?;
    let room1 = bob_room1.room_id().to_owned();
    view.wait("\"Bob's room\" as an invite with its name", STEP, |items| {
        find(items, &room1)
            .is_some_and(|room| room.state() == RoomState::Invited && name_of(room) == "Bob's room")
    })
    .await?;
    join(&alice, &room1).await?;
    view.wait("\"Bob's room\" joined", STEP, |items| {
        find(items, &room1).is_some_and(|room| room.state() == RoomState::Joined)
    })
    .await?;
    println!("step 2 ok: the invite showed as Invited named \"Bob's room\"; joined, it shows as Joined");

    // 3. Recency order: alice's join makes "Second" the newest room, then bob's
    // message in the first room brings it back on top.
    let bob_room2 = create_room(&bob, "Second", &alice_id, false).await?;
    let room2 = bob_room2.room_id().to_owned();
    view.wait("\"Second\" as an invite", STEP, |items| {
        find(items, &room2).is_some_and(|room| room.state() == RoomState::Invited)
    })
    .await?;
    join(&alice, &room2).await?;
    view.wait("\"Second\" joined and on top", STEP, |items| {
        order(items) == [room2.clone(), room1.clone()]
            && find(items, &room2).is_some_and(|room| room.state() == RoomState::Joined)
    })
    .await?;
    send_text(&bob_room1, &format!("bump {suffix}")).await?;
    view.wait("\"Bob's room\" back on top after bob's message", STEP, |items| {
        order(items) == [room1.clone(), room2.clone()]
    })
    .await?;
    println!("step 3 ok: the list follows recency (\"Second\" on top, then \"Bob's room\" after a message)");

    // 4. A rename reaches the list.
    within(STEP, "bob: rename \"Bob's room\"", bob_room1.set_name("Renamed".to_owned())).await?;
    view.wait("the room renamed to \"Renamed\"", STEP, |items| {
        find(items, &room1).is_some_and(|room| name_of(room) == "Renamed")
    })
    .await?;
    println!("step 4 ok: the rename shows as \"Renamed\"");

    // 5. A live message wakes the long-poll at once.
    let live = format!("live {suffix}");
    send_text(&bob_room1, &live).await?;
    let sent = Instant::now();
    let latency = inbox.wait_for(&room1, &live, STEP).await?.saturating_duration_since(sent);
    ensure!(latency < LIVE, "bob's message took {latency:?} to reach alice, more than {LIVE:?}");
    println!("step 5 ok: a live message reached alice {} ms after bob's send returned", latency.as_millis());

    // 6. Leaving. Element X's filter hides left rooms; later responses must not revive it.
    let alice_room2 = alice.get_room(&room2).context("alice's client does not know \"Second\"")?;
    within(STEP, "alice: leave \"Second\"", alice_room2.leave()).await?;
    view.wait("\"Second\" gone from the list", STEP, |items| find(items, &room2).is_none()).await?;
    ensure!(alice_room2.state() == RoomState::Left, "\"Second\" is {:?} after leaving", alice_room2.state());
    let unseen = format!("after leave {suffix}");
    send_text(&bob_room2, &unseen).await?;
    let probe = format!("probe {suffix}");
    send_text(&bob_room1, &probe).await?;
    inbox.wait_for(&room1, &probe, STEP).await?;
    view.pump(Duration::from_millis(500)).await?;
    let state = alice.get_room(&room2).map(|room| room.state());
    ensure!(state == Some(RoomState::Left), "\"Second\" came back as {state:?} after a later sync");
    ensure!(find(&view.items, &room2).is_none(), "\"Second\" came back into the list: [{}]", view.describe());
    ensure!(!inbox.has_seen(&unseen), "alice received a message sent to \"Second\" after she left");
    println!("step 6 ok: \"Second\" left the list and stayed Left");

    // 7. Encryption both ways. bob creates the room encrypted; alice opens it as
    // Element X does (room subscription + timeline). Timelines, not event handlers,
    // because a room key may arrive after its message: the SDK then re-decrypts.
    let bob_secret = create_room(&bob, "Secret", &alice_id, true).await?;
    let secret = bob_secret.room_id().to_owned();
    view.wait("the encrypted room \"Secret\" as an invite", STEP, |items| {
        find(items, &secret)
            .is_some_and(|room| room.state() == RoomState::Invited && name_of(room) == "Secret")
    })
    .await?;
    let alice_secret = join(&alice, &secret).await?;
    room_list_service.subscribe_to_rooms(&[&*secret]).await;
    let alice_timeline =
        within(STEP, "alice: open the timeline of \"Secret\"", alice_secret.timeline()).await?;
    wait_until(STEP, "alice's client to know \"Secret\" is encrypted (m.room.encryption)", async || {
        alice_secret.encryption_state().is_encrypted()
    })
    .await?;
    // bob must see alice as a member, or he would share the room key with himself only.
    wait_until(STEP, "bob's client to see alice joined \"Secret\" (her m.room.member)", async || {
        matches!(bob_secret.get_member_no_sync(&alice_id).await,
            Ok(Some(member)) if *member.membership() == MembershipState::Join)
    })
    .await?;
    let bob_timeline = within(STEP, "bob: open the timeline of \"Secret\"", bob_secret.timeline()).await?;
    let from_bob = format!("secret from bob {suffix}");
    let sent = within(
        RECOVERY,
        "bob: send an encrypted message (keys query, one-time key claim, room key to-device)",
        bob_secret.send(RoomMessageEventContent::text_plain(&from_bob)),
    )
    .await?;
    ensure!(sent.encryption_info.is_some(), "bob's message in \"Secret\" went out unencrypted");
    let alice_utd = wait_for_decrypted(&alice_timeline, &bob_id, &from_bob, "alice").await?;
    let from_alice = format!("secret from alice {suffix}");
    let content = RoomMessageEventContent::text_plain(&from_alice);
    within(STEP, "alice: send through the timeline", alice_timeline.send(content.into())).await?;
    let bob_utd = wait_for_decrypted(&bob_timeline, &alice_id, &from_alice, "bob").await?;
    println!("step 7 ok: megolm messages decrypted both ways (late keys: alice {alice_utd}, bob {bob_utd})");

    // 8. Server restart. Nothing may have disrupted sliding sync before it.
    let disrupted = alice_watch.disruptions.load(SeqCst) + bob_watch.disruptions.load(SeqCst);
    ensure!(disrupted == 0, "sync services stopped {disrupted} time(s) before the restart (see above)");
    println!("restart-now");
    std::io::stdout().flush()?;
    let mut line = String::new();
    let mut stdin = BufReader::new(tokio::io::stdin());
    let read = within(
        Duration::from_secs(120),
        "wait for the restart (a line on stdin)",
        stdin.read_line(&mut line),
    )
    .await?;
    ensure!(read > 0, "stdin closed before the harness reported the restart");
    let restarted = Instant::now();
    let after = format!("after restart {suffix}");
    send_text(&bob_room1, &after).await?;
    inbox
        .wait_for(&room1, &after, RECOVERY)
        .await
        .context("alice's SDK did not recover after the restart")?;
    println!("step 8: alice got bob's message {} ms after the restart", restarted.elapsed().as_millis());
    wait_until(RECOVERY, "alice's SyncService and RoomListService to be Running again", async || {
        matches!(alice_sync.state().get(), SyncState::Running)
            && room_list_service.state().get() == RoomListState::Running
    })
    .await?;
    wait_until(RECOVERY, "bob's SyncService to be Running again", async || {
        matches!(bob_sync.state().get(), SyncState::Running)
    })
    .await?;
    let live = format!("live after restart {suffix}");
    send_text(&bob_room1, &live).await?;
    let sent = Instant::now();
    let latency = inbox.wait_for(&room1, &live, RECOVERY).await?.saturating_duration_since(sent);
    let unknown_pos = if alice_watch.unknown_pos.load(SeqCst) {
        "alice's SDK got M_UNKNOWN_POS and started a new sliding sync session"
    } else {
        "alice's SDK never got M_UNKNOWN_POS"
    };
    println!(
        "step 8 ok: live again ({} ms); sync service restarts: alice {}, bob {}; {unknown_pos}",
        latency.as_millis(),
        alice_watch.disruptions.load(SeqCst),
        bob_watch.disruptions.load(SeqCst),
    );

    // 9. Stop (the caller prints `interop ok`).
    alice_watch.task.abort();
    bob_watch.task.abort();
    for (who, service) in [("alice", &alice_sync), ("bob", &bob_sync)] {
        if tokio::time::timeout(STEP, service.stop()).await.is_err() {
            println!("warning: stopping {who}'s sync service timed out");
        }
    }
    println!("step 9: sync services stopped");
    Ok(())
}

/// `fut` within `limit`, with `what` in the error.
async fn within<T, E>(limit: Duration, what: &str, fut: impl IntoFuture<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Into::<anyhow::Error>::into(error).context(format!("{what} failed"))),
        Err(_) => bail!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` until it holds, for at most `limit`.
async fn wait_until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, check()).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(TICK).await;
    }
}

/// A client as Element X builds one: it refuses a server whose `/versions` does
/// not advertise simplified sliding sync.
async fn new_client(base: &str) -> Result<Client> {
    let builder =
        Client::builder().homeserver_url(base).sliding_sync_version_builder(VersionBuilder::DiscoverNative);
    within(STEP, "build a client (/versions must list org.matrix.simplified_msc3575)", builder.build()).await
}

/// Registers `username` through the `m.login.dummy` UIA stage; `login` keeps the
/// session on `client`.
async fn register(client: &Client, username: &str, login: bool) -> Result<()> {
    let mut session = None;
    for _ in 0..2 {
        let mut request = RegisterRequest::new();
        request.username = Some(username.to_owned());
        request.password = Some(PASSWORD.to_owned());
        request.inhibit_login = !login;
        let mut dummy = Dummy::new();
        dummy.session = session.clone();
        request.auth = Some(AuthData::Dummy(dummy));
        let outcome = tokio::time::timeout(STEP, client.matrix_auth().register(request))
            .await
            .with_context(|| format!("timed out registering {username}"))?;
        let error = match outcome {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        // A 401 with a UIA session: retry the dummy stage within that session.
        let uia_session = error.as_uiaa_response().and_then(|info| info.session.clone());
        match uia_session {
            Some(new_session) if session.is_none() => session = Some(new_session),
            _ => return Err(anyhow::Error::new(error).context(format!("registering {username}"))),
        }
    }
    bail!("registering {username}: the server still wants authentication after m.login.dummy")
}

/// bob creates a named room inviting `invitee`, encrypted with megolm if asked.
async fn create_room(bob: &Client, name: &str, invitee: &UserId, encrypted: bool) -> Result<Room> {
    let mut request = CreateRoomRequest::new();
    request.name = Some(name.to_owned());
    request.invite = vec![invitee.to_owned()];
    if encrypted {
        let encryption = RoomEncryptionEventContent::with_recommended_defaults();
        request.initial_state = vec![InitialStateEvent::with_empty_state_key(encryption).to_raw_any()];
    }
    within(STEP, &format!("bob: create room {name:?}"), bob.create_room(request)).await
}

/// alice accepts an invite through the SDK, as Element X's "Accept" does.
async fn join(alice: &Client, room_id: &RoomId) -> Result<Room> {
    let room = alice.get_room(room_id).with_context(|| format!("alice's client does not know {room_id}"))?;
    within(STEP, &format!("alice: join {room_id}"), room.join()).await?;
    Ok(room)
}

async fn send_text(room: &Room, body: &str) -> Result<()> {
    within(STEP, &format!("send {body:?}"), room.send(RoomMessageEventContent::text_plain(body))).await?;
    Ok(())
}

/// Waits until `timeline` shows `body` from `sender`, decrypted; returns whether
/// an undecryptable item showed first (its key came after it).
async fn wait_for_decrypted(timeline: &Timeline, sender: &UserId, body: &str, who: &str) -> Result<bool> {
    let mut saw_utd = false;
    wait_until(RECOVERY, &format!("{who} to decrypt {body:?}"), async || {
        let items = timeline.items().await;
        let mut found = false;
        for event in items.iter().filter_map(|item| item.as_event()) {
            saw_utd |= event.content().as_unable_to_decrypt().is_some();
            found |= event.sender() == sender
                && event.encryption_info().is_some()
                && event.content().as_message().is_some_and(|message| message.body() == body);
        }
        found
    })
    .await?;
    Ok(saw_utd)
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}

fn name_of(room: &Room) -> String {
    room.cached_display_name().map(|name| name.to_string()).unwrap_or_default()
}

fn find<'v>(items: &'v Vector<RoomListItem>, room_id: &RoomId) -> Option<&'v RoomListItem> {
    items.iter().find(|room| room.room_id() == room_id)
}

fn order(items: &Vector<RoomListItem>) -> Vec<OwnedRoomId> {
    items.iter().map(|room| room.room_id().to_owned()).collect()
}

/// alice's room list as Element X's room list screen sees it: the sorted,
/// filtered `all_rooms` entries, kept up to date by applying the stream's diffs.
struct RoomListView<'a> {
    entries: Pin<Box<dyn Stream<Item = Vec<VectorDiff<RoomListItem>>> + 'a>>,
    items: Vector<RoomListItem>,
    _controller: RoomListDynamicEntriesController,
}

impl<'a> RoomListView<'a> {
    fn new(room_list: &'a RoomList) -> Result<Self> {
        let (entries, controller) = room_list.entries_with_dynamic_adapters(PAGE_SIZE);
        // Element X's "all" filter: not left, newest version of upgraded rooms.
        let filters = vec![
            Box::new(new_filter_non_left()) as BoxedFilterFn,
            Box::new(new_filter_deduplicate_versions()) as BoxedFilterFn,
        ];
        let filter: BoxedFilterFn = Box::new(new_filter_all(filters));
        ensure!(controller.set_filter(filter), "the room list refused its filter");
        Ok(Self { entries: Box::pin(entries), items: Vector::new(), _controller: controller })
    }

    /// Applies diffs until `ok` holds, for at most `limit`.
    async fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&Vector<RoomListItem>) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !ok(&self.items) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {limit:?} waiting for alice's room list to show {what}: [{}]",
                    self.describe()
                );
            }
            // Predicates also read live room data, so re-check at least every TICK.
            self.apply_next(left.min(TICK)).await?;
        }
        Ok(())
    }

    /// Applies whatever diffs arrive during `duration`.
    async fn pump(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.apply_next(deadline.saturating_duration_since(Instant::now())).await?;
        }
        Ok(())
    }

    async fn apply_next(&mut self, max: Duration) -> Result<()> {
        if let Ok(diffs) = tokio::time::timeout(max, self.entries.next()).await {
            for diff in diffs.context("alice's room list stream ended")? {
                diff.apply(&mut self.items);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let rooms: Vec<String> = self
            .items
            .iter()
            .map(|room| format!("{} {:?} {:?}", room.room_id(), name_of(room), room.state()))
            .collect();
        rooms.join(", ")
    }
}

struct Received {
    room_id: OwnedRoomId,
    body: String,
    at: Instant,
}

/// Every plain or decrypted `m.room.message` alice's client hands to event handlers.
struct Inbox {
    receiver: mpsc::UnboundedReceiver<Received>,
    seen: Vec<Received>,
}

impl Inbox {
    fn install(client: &Client) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
            let sender = sender.clone();
            async move {
                let room_id = room.room_id().to_owned();
                let body = event.content.body().to_owned();
                let _ = sender.send(Received { room_id, body, at: Instant::now() });
            }
        });
        Self { receiver, seen: Vec::new() }
    }

    /// When `body` arrived in `room_id`, waiting at most `limit` for it.
    async fn wait_for(&mut self, room_id: &RoomId, body: &str, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(message) = self.seen.iter().find(|m| *m.room_id == *room_id && m.body == body) {
                return Ok(message.at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.receiver.recv()).await {
                Ok(Some(message)) => self.seen.push(message),
                Ok(None) => bail!("alice's event handler channel closed"),
                Err(_) => bail!("timed out after {limit:?}: alice never received {body:?} in {room_id}"),
            }
        }
    }

    fn has_seen(&mut self, body: &str) -> bool {
        while let Ok(message) = self.receiver.try_recv() {
            self.seen.push(message);
        }
        self.seen.iter().any(|m| m.body == body)
    }
}

/// Watches a `SyncService` and restarts it when it stops, as Element X does.
struct Watch {
    disruptions: Arc<AtomicUsize>,
    unknown_pos: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Watch {
    fn spawn(who: &'static str, service: Arc<SyncService>) -> Self {
        let disruptions = Arc::new(AtomicUsize::new(0));
        let unknown_pos = Arc::new(AtomicBool::new(false));
        let (count, saw_unknown_pos) = (disruptions.clone(), unknown_pos.clone());
        let task = tokio::spawn(async move {
            let mut states = service.state();
            while let Some(state) = states.next().await {
                let reason = match state {
                    SyncState::Idle | SyncState::Running => continue,
                    SyncState::Offline => "offline".to_owned(),
                    SyncState::Terminated => "terminated".to_owned(),
                    SyncState::Error(error) if is_unknown_pos(&error) => {
                        saw_unknown_pos.store(true, SeqCst);
                        format!("M_UNKNOWN_POS, the server forgot the connection: {error}")
                    }
                    SyncState::Error(error) => format!("error: {error}"),
                };
                count.fetch_add(1, SeqCst);
                println!("[{who}] sync service stopped ({reason}); restarting it as Element X does");
                tokio::time::sleep(Duration::from_millis(500)).await;
                service.start().await;
            }
        });
        Self { disruptions, unknown_pos, task }
    }
}

fn is_unknown_pos(error: &SyncError) -> bool {
    let sdk_error = match error {
        SyncError::RoomList(room_list_service::Error::SlidingSync(error)) => error,
        SyncError::EncryptionSync(encryption_sync_service::Error::SlidingSync(error)) => error,
        _ => return false,
    };
    sdk_error.client_api_error_kind() == Some(&ErrorKind::UnknownPos)
}
