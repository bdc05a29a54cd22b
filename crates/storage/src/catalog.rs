//! Every table of the database, named `key_value` after what it maps.
//! Adding a table here is all it takes to create its column family.

/// The names of all column families, in the order they are created.
pub const TABLES: &[&str] = &[
    // Server-wide singletons: signing key, first-run registration token, counters.
    "global",
    // Accounts: user ID → account record (password hash, admin, deactivated).
    "userid_account",
    // Access token → session (user, device, expiry). O(1) token lookup.
    "token_session",
    // Refresh token → session it renews.
    "refreshtoken_session",
    // One-time login token (m.login.token) → user and expiry.
    "logintoken_user",
    // (user ID, device ID) → device record (display name, tokens, last seen).
    "userdeviceid_device",
    // (user ID, profile field) → JSON value (displayname, avatar_url, extended fields).
    "useridfield_profile",
    // (user ID, filter ID) → filter definition (JSON).
    "useridfilterid_filter",
    // (user ID, room ID or "", event type) → account data content (JSON).
    "useridroomidtype_accountdata",
];
