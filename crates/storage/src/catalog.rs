//! Every table of the database, named `key_value` after what it maps.
//! Adding a table here is all it takes to create its column family.

/// The names of all column families, in the order they are created.
pub const TABLES: &[&str] = &[
    // Server-wide singletons: signing key, first-run registration token, counters.
    "global",
    // Accounts: user ID → account record (password hash, admin, deactivated).
    "userid_account",
    // Registration token an admin created → its limits and completed uses.
    "registrationtoken_token",
    // Access token → session (user, device, expiry). O(1) token lookup.
    "token_session",
    // Refresh token → session it renews.
    "refreshtoken_session",
    // One-time login token (m.login.token) → user and expiry.
    "logintoken_user",
    // OpenID token (for identity and integration servers) → user and expiry.
    "openidtoken_user",
    // (user ID, device ID) → device record (display name, tokens, last seen).
    "userdeviceid_device",
    // (user ID, profile field) → JSON value (displayname, avatar_url, extended fields).
    "useridfield_profile",
    // (user ID, filter ID) → filter definition (JSON).
    "useridfilterid_filter",
    // (user ID, room ID or "", event type) → account data content (JSON).
    "useridroomidtype_accountdata",
    // Stream position → (user ID, room ID or "", event type): account data changes, for sync.
    "stream_accountdata",
    // (room ID, user ID, receipt type, thread ID or "") → receipt (event ID, ts).
    "roomiduserreceipt_receipt",
    // Stream position → (room ID, user ID, receipt type, thread ID): receipt changes, for sync.
    "stream_receipt",
    // (user ID, app ID, pushkey) → pusher (JSON, as the client set it).
    "useridappidpushkey_pusher",
    // (destination, sequence) → job: the durable outgoing queue (push gateways,
    // federation and appservice transactions).
    "destinationseq_job",
    // Destination → (first, last) sequence of its transaction that failed: the retry sends exactly those.
    "destination_txn",
    // Appservice ID → its registration (JSON), for those an admin registered at runtime.
    "appserviceid_registration",
    // (user ID, room ID) → an invite to a room on another server this server is not in
    // (the invite event's ID, the room version, the stripped state it came with).
    "useridroomid_invite",
    // Server name → its signing keys as we know them and its latest key response.
    "servername_keys",
    // (user ID, device ID, stream) → to-device message (type, sender, content), until acknowledged.
    "useriddevicestream_todevice",
    // (sender, device, transaction ID) → () for idempotent /sendToDevice.
    "useriddevicetxn_todevice",
    // (user ID, device ID) → the device's identity keys (JSON as uploaded).
    "useriddeviceid_devicekeys",
    // (user ID, device ID, "algorithm:key_id") → one-time key (JSON).
    "useriddevicekeyid_onetimekey",
    // (user ID, device ID, algorithm) → fallback key (key ID, key, used).
    "useriddevicealgorithm_fallbackkey",
    // (user ID, "master" | "self_signing" | "user_signing") → cross-signing key (JSON).
    "useridkind_crosssigningkey",
    // (user ID, backup version) → backup version (algorithm, auth data, etag, deleted).
    "useridversion_backup",
    // (user ID, backup version, room ID, session ID) → backed-up room key (JSON).
    "useridversionroomsession_backupkey",
    // Stream position → user ID whose devices or keys changed (device_lists), or
    // "<user ID> <viewer>" for a change only that viewer sees (user-signing keys).
    "stream_keychange",
    // Our user ID → stream ID of their last m.device_list_update (the next one's prev_id).
    "userid_devicelistid",
    // Another server's user ID → their cached device list (devices, cross-signing keys,
    // stream ID). Written by E2ee; dropped by the membership index when they or we
    // (re)join a room, since updates sent while no room was shared never came.
    "remoteuserid_devicelist",
    // User ID → (device ID, device data): the user's dehydrated device (MSC3814).
    "userid_dehydrateddevice",
    // (room ID, "<field>:<term>", stream) → occurrences: the full-text search index.
    "roomidtermstream_count",
    // (server name, media ID) → media record (content hash, type, name, size, uploader, time).
    "servermediaid_media",
    // Delay ID → delayed event (MSC4140): what to send, for whom, when.
    "delayid_delayedevent",
    // (due time ms, delay ID) → "": the timers, soonest first.
    "dueatdelayid",
    // (user ID, delay ID) → "": a user's delayed events.
    "useriddelayid",
    // (user ID, device ID, transaction ID) → delay ID: idempotent scheduling.
    "useriddevicetxn_delayid",
    // User ID → presence (state, status message, last active).
    "userid_presence",
    // Stream position → user ID: presence changes, for sync.
    "stream_presence",
    // (user ID, room ID, stream) → notification (highlight, thread): unread counts.
    "useridroomidstream_notification",
    // (user ID, stream) → notification (room, event, actions): /notifications.
    "useridstream_notification",
    // Rooms. Event IDs and (type, state_key) pairs are interned to u64 short IDs.
    "eventid_short",
    "short_eventid",
    "statekey_short",
    "short_statekey",
    // Event ID → stored PDU (JSON with its room, stream position and state snapshots).
    "eventid_pdu",
    // (room ID, stream position) → event ID: the room timeline in order.
    "roomidstream_eventid",
    // (room ID, backfill order) → event ID: history fetched from other servers
    // (`/backfill`), older than the room's first event here; 1 is the newest.
    "roomidbackfill_eventid",
    // Stream position → (room ID, event ID): everything, in order (for sync).
    "stream_roomideventid",
    // State snapshot ID → layer (parent snapshot + entries changed).
    "shortstatehash_statelayer",
    // Room ID → room record (version, current state, forward extremities, depth).
    "roomid_room",
    // (user ID, room ID) → membership, and the reverse index.
    "useridroomid_membership",
    "roomiduserid_membership",
    // (user ID, room ID) → stream position of the user's latest join (history visibility).
    "useridroomid_joinstream",
    // (user ID, room ID) → () for rooms the user forgot.
    "useridroomid_forgotten",
    // (user ID, device ID, transaction ID) → event ID (idempotent sends).
    "useriddevicetxn_eventid",
    // (parent event ID, child stream position) → (rel_type, event type, child event ID, sender).
    "eventidstream_relation",
    // (room ID, thread root event ID) → stream position of the thread's latest event.
    "roomidthreadroot_latest",
    // (room ID, stream position of a thread's latest event) → thread root
    // event ID: `/threads` newest first without reading every root.
    "roomidthreadlatest_root",
    // (room ID, origin_server_ts, stream) → event ID, for /timestamp_to_event.
    "roomidts_eventid",
    // Report ID (stream-ordered) → the report (room, event, reporter, reason, score).
    "reportid_report",
    // Room alias → room ID, and (room ID, alias) for listing.
    "alias_roomid",
    "roomidalias_creator",
    // Room ID → () for rooms published in the room directory.
    "publicroomid",
    // (appservice ID|network ID, room ID) → (): rooms an appservice published in its network's directory.
    "networkroomid",
    // Room ID → (): rooms anyone may join or read (join rule `public` or history
    // `world_readable`), whose members the user directory shows to everyone.
    "openroomid",
    // User ID → stream position of their erasure (deactivated with `erase`).
    "userid_erasure",
    // (user ID, device ID, room ID) → stream position: a device's peek into a
    // world-readable room (MSC2753), shown in that device's sync.
    "useriddeviceroomid_peek",
];
