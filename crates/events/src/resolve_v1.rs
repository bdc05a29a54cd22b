//! State resolution v1 (room version 1), which ruma does not provide: the
//! passes of `rooms/v1.md`. Power levels, then join rules, then each
//! member's events are replayed oldest first while the authorization rules
//! allow them; every other conflict takes the deepest event that passes.

use std::collections::BTreeMap;

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::AuthorizationRules,
    state_res::{self, StateMap},
};

use crate::Pdu;

type StateKey = (StateEventType, String);

/// Resolve several state maps (one per fork) of a version 1 room.
pub fn resolve_v1(
    rules: &AuthorizationRules,
    states: &[StateMap<OwnedEventId>],
    fetch: impl Fn(&EventId) -> Option<Pdu>,
) -> StateMap<OwnedEventId> {
    let mut candidates: BTreeMap<StateKey, Vec<OwnedEventId>> = BTreeMap::new();
    for state in states {
        for (key, id) in state {
            let ids = candidates.entry(key.clone()).or_default();
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    let mut resolved = StateMap::new();
    let mut conflicted = Vec::new();
    for (key, ids) in candidates {
        match <[OwnedEventId; 1]>::try_from(ids) {
            Ok([id]) => {
                resolved.insert(key, id);
            }
            Err(ids) => conflicted.push((key, ids.iter().filter_map(|id| fetch(id)).collect::<Vec<_>>())),
        }
    }
    let auth_passes =
        [StateEventType::RoomPowerLevels, StateEventType::RoomJoinRules, StateEventType::RoomMember];
    for kind in &auth_passes {
        for (key, events) in conflicted.iter_mut().filter(|(key, _)| key.0 == *kind) {
            // Oldest first: ascending depth, then descending sha1(event_id).
            events.sort_by(|a, b| {
                a.depth.cmp(&b.depth).then_with(|| sha1(&b.event_id).cmp(&sha1(&a.event_id)))
            });
            let mut events = events.iter();
            let Some(first) = events.next() else { continue };
            resolved.insert(key.clone(), first.event_id.clone());
            for event in events {
                if !allowed(rules, event, &resolved, &fetch) {
                    break;
                }
                resolved.insert(key.clone(), event.event_id.clone());
            }
        }
    }
    for (key, events) in conflicted.iter_mut().filter(|(key, _)| !auth_passes.contains(&key.0)) {
        // Deepest first: descending depth, then ascending sha1(event_id);
        // when none passes, the oldest (as Synapse does).
        events.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| sha1(&a.event_id).cmp(&sha1(&b.event_id))));
        let chosen = events.iter().find(|e| allowed(rules, e, &resolved, &fetch)).or(events.last());
        if let Some(event) = chosen {
            resolved.insert(key.clone(), event.event_id.clone());
        }
    }
    resolved
}

fn allowed(
    rules: &AuthorizationRules,
    event: &Pdu,
    state: &StateMap<OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Pdu>,
) -> bool {
    let lookup = |kind: &StateEventType, state_key: &str| {
        state.get(&(kind.clone(), state_key.to_owned())).and_then(|id| fetch(id))
    };
    state_res::check_state_dependent_auth_rules(rules, event, lookup).is_ok()
}

fn sha1(event_id: &EventId) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, event_id.as_bytes()).as_ref().to_vec()
}
