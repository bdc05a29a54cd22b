//! `/hierarchy` across servers: a client's walk through a space reads the
//! rooms this server knows from storage and asks a child's `via` servers
//! (`/_matrix/federation/v1/hierarchy`) for the rest; other servers ask us
//! for ours.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use estuary_core::{Error, Result};
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId, api::federation::space::get_hierarchy};
use serde_json::Value as JsonValue;

use super::Federation;

/// Rooms one walk lists at most.
const WALK_ROOMS: usize = 1_000;
/// Rooms of other servers one walk asks about at most.
const REMOTE_ROOMS_ASKED: usize = 20;
/// How long one server may take to describe a room.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a room of the walk was found: its depth and the servers its
/// parent's `m.space.child` names.
struct Pending {
    room_id: OwnedRoomId,
    depth: usize,
    via: Vec<OwnedServerName>,
}

/// What a walk is asked for.
pub struct HierarchyRequest<'a> {
    pub viewer: &'a UserId,
    pub root: &'a RoomId,
    pub suggested_only: bool,
    pub max_depth: Option<usize>,
    pub from: Option<&'a str>,
    pub limit: usize,
}

/// The servers a child event names (`content.via`).
fn via_of(child: &JsonValue) -> Vec<OwnedServerName> {
    let via = child["content"]["via"].as_array().into_iter().flatten();
    via.filter_map(|s| s.as_str()).filter_map(|s| ServerName::parse(s).ok()).collect()
}

impl Federation {
    /// A space and the rooms below it, breadth first, as `viewer` may see
    /// them; paged by position (`p<N>` tokens).
    pub async fn hierarchy(&self, request: HierarchyRequest<'_>) -> Result<(Vec<JsonValue>, Option<String>)> {
        let HierarchyRequest { viewer, root, suggested_only, max_depth, from, limit } = request;
        let offset = match from {
            Some(token) => token
                .strip_prefix('p')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid_param("Invalid `from` token"))?,
            None => 0usize,
        };
        let root_via = root.server_name().map(|s| vec![s.to_owned()]).unwrap_or_default();
        let mut queue = VecDeque::from([Pending { room_id: root.to_owned(), depth: 0, via: root_via }]);
        let (mut seen, mut rooms, mut asked) = (HashSet::new(), Vec::new(), 0);
        while let Some(Pending { room_id, depth, via }) = queue.pop_front() {
            if rooms.len() >= WALK_ROOMS || !seen.insert(room_id.clone()) {
                continue;
            }
            let chunk = match self.rooms.space_chunk(&room_id, suggested_only)? {
                Some(chunk) if self.rooms.can_preview(viewer, &room_id)? => Some(chunk),
                Some(_) => None,
                None if asked < REMOTE_ROOMS_ASKED && self.enabled() => {
                    asked += 1;
                    self.remote_chunk(&room_id, &via, suggested_only).await
                }
                None => None,
            };
            let Some(chunk) = chunk else {
                if room_id == root {
                    return Err(Error::forbidden("You cannot see this space"));
                }
                continue;
            };
            if max_depth.is_none_or(|max| depth < max) {
                for child in chunk["children_state"].as_array().into_iter().flatten() {
                    let Some(child_id) = child["state_key"].as_str().and_then(|id| RoomId::parse(id).ok())
                    else {
                        continue;
                    };
                    queue.push_back(Pending { room_id: child_id, depth: depth + 1, via: via_of(child) });
                }
            }
            rooms.push(chunk);
        }
        let limit = limit.clamp(1, 100);
        let next = (offset + limit < rooms.len()).then(|| format!("p{}", offset + limit));
        Ok((rooms.into_iter().skip(offset).take(limit).collect(), next))
    }

    /// A room this server does not know, as the first of `via` that answers
    /// describes it (its summary and its children events).
    async fn remote_chunk(
        &self,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
    ) -> Option<JsonValue> {
        for server in via.iter().filter(|s| **s != self.config.server_name).take(3) {
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            match tokio::time::timeout(REMOTE_TIMEOUT, self.client.send(server, request)).await {
                Ok(Ok(answer)) if answer.room.summary.room_id == room_id => {
                    return serde_json::to_value(&answer.room).ok();
                }
                Ok(Ok(_)) => tracing::warn!(%server, %room_id, "hierarchy answer for another room"),
                Ok(Err(err)) => tracing::debug!(%server, %room_id, "hierarchy not given: {err}"),
                Err(_) => tracing::warn!(%server, %room_id, "hierarchy request timed out"),
            }
        }
        None
    }

    /// `/hierarchy` for another server: the room (if it may see it) with
    /// its children events, the summaries of the children this server
    /// knows and the server may see, and those it may not.
    pub fn serve_hierarchy(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<(JsonValue, Vec<JsonValue>, Vec<OwnedRoomId>)> {
        let not_found = || Error::not_found("Unknown room, or not one this server may show you");
        self.require_acl(origin, room_id)?;
        if self.rooms.room(room_id)?.is_none() || !self.rooms.server_can_preview(origin, room_id)? {
            return Err(not_found());
        }
        let room = self.rooms.space_chunk(room_id, suggested_only)?.ok_or_else(not_found)?;
        let (mut children, mut inaccessible) = (Vec::new(), Vec::new());
        for child in room["children_state"].as_array().into_iter().flatten() {
            let Some(child_id) = child["state_key"].as_str().and_then(|id| RoomId::parse(id).ok()) else {
                continue;
            };
            if self.rooms.room(&child_id)?.is_none() {
                continue;
            }
            if self.rooms.server_can_preview(origin, &child_id)? {
                children.push(self.rooms.room_summary(&child_id)?);
            } else {
                inaccessible.push(child_id);
            }
        }
        Ok((room, children, inaccessible))
    }
}
