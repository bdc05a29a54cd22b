//! The authorization rules, through ruma's state-res checks.

use ruma::{
    EventId, OwnedEventId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res,
};
use serde_json::value::RawValue;

use crate::Pdu;

/// The (type, state_key) pairs whose current events become the auth events
/// of a new event.
pub fn auth_types(
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawValue,
    rules: &AuthorizationRules,
) -> Result<Vec<(StateEventType, String)>, String> {
    state_res::auth_types_for_event(kind, sender, state_key, content, rules)
}

/// Check `pdu` against the rules: those that need no state (its auth events
/// must exist and fit), then those that depend on `state` (the room state
/// the event is checked against: its auth events, the state before it, or
/// the current state).
pub fn check(
    pdu: &Pdu,
    rules: &AuthorizationRules,
    fetch_event: impl Fn(&EventId) -> Option<Pdu>,
    state: impl Fn(&StateEventType, &str) -> Option<Pdu>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(rules, pdu, fetch_event)?;
    state_res::check_state_dependent_auth_rules(rules, pdu, state)
}

/// The IDs of `auth_types` in a state map, in a stable order.
pub fn select_auth_events(
    keys: &[(StateEventType, String)],
    lookup: impl Fn(&StateEventType, &str) -> Option<OwnedEventId>,
) -> Vec<OwnedEventId> {
    let mut ids: Vec<OwnedEventId> = keys.iter().filter_map(|(t, k)| lookup(t, k)).collect();
    ids.sort();
    ids.dedup();
    ids
}
