//! State resolution v2 (and v2.1 for room version 12) over forked state;
//! room version 1 resolves with v1 (`resolve_v1`).

use std::collections::{HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId, RoomVersionId,
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use crate::Pdu;

/// Every event reachable through `auth_events` from `start` (excluding `start`).
pub fn auth_chain(
    start: impl IntoIterator<Item = OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Pdu>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> =
        start.into_iter().filter_map(|id| fetch(&id)).flat_map(|pdu| pdu.auth_events).collect();
    while let Some(id) = todo.pop() {
        if seen.insert(id.clone())
            && let Some(pdu) = fetch(&id)
        {
            todo.extend(pdu.auth_events);
        }
    }
    seen
}

/// Resolve several state maps (one per fork) into one.
pub fn resolve(
    room_version: &RoomVersionId,
    states: &[StateMap<OwnedEventId>],
    fetch: impl Fn(&EventId) -> Option<Pdu>,
) -> Result<StateMap<OwnedEventId>, String> {
    let rules = room_version.rules().ok_or("unsupported room version")?;
    let Some(v2) = rules.state_res.v2_rules() else {
        return Ok(crate::resolve_v1::resolve_v1(&rules.authorization, states, fetch));
    };
    let auth_chains = states
        .iter()
        .map(|state| auth_chain(state.values().cloned(), &fetch).into_iter().collect::<EventIdSet<_>>())
        .collect();
    state_res::resolve(&rules.authorization, v2, states, auth_chains, &fetch, |conflicted| {
        Some(conflicted_subgraph(conflicted, &fetch))
    })
    .map_err(|e| e.to_string())
}

/// The conflicted state subgraph (room version 12): conflicted events and
/// every event on an auth-event path from one conflicted event to another.
fn conflicted_subgraph(
    conflicted: &StateMap<Vec<OwnedEventId>>,
    fetch: &impl Fn(&EventId) -> Option<Pdu>,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    let mut result: EventIdSet<OwnedEventId> = targets.iter().cloned().collect();
    for start in &targets {
        let Some(pdu) = fetch(start) else { continue };
        for child in pdu.auth_events {
            mark_paths(&child, &targets, fetch, &mut reaches, &mut result);
        }
    }
    result
}

/// Whether `id` reaches a conflicted event; events that do are added to `result`.
fn mark_paths(
    id: &OwnedEventId,
    targets: &HashSet<OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Pdu>,
    reaches: &mut HashMap<OwnedEventId, bool>,
    result: &mut EventIdSet<OwnedEventId>,
) -> bool {
    if let Some(known) = reaches.get(id) {
        return *known;
    }
    reaches.insert(id.clone(), false); // guards against cycles in bad data
    let mut found = targets.contains(id);
    if let Some(pdu) = fetch(id) {
        for child in &pdu.auth_events {
            found |= mark_paths(child, targets, fetch, reaches, result);
        }
    }
    if found {
        result.insert(id.clone());
    }
    reaches.insert(id.clone(), found);
    found
}
