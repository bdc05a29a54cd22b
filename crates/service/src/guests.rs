//! Guests leave rooms that stop letting them in: when a room's
//! `m.room.guest_access` is no longer `can_join`, by a local member's change
//! or one received from another server, this server's guests in it leave.

use estuary_core::Result;
use estuary_events::PduTemplate;
use ruma::RoomId;

use crate::{accounts::Accounts, rooms::Rooms};

/// Each of this server's guests still joined to `room_id` leaves (a
/// leave of one's own needs no power), unless guests may join. Best
/// effort: a guest that cannot be removed is logged.
pub async fn remove_revoked(rooms: &Rooms, accounts: &Accounts, room_id: &RoomId) -> Result<()> {
    if rooms.guests_can_join(room_id)? {
        return Ok(());
    }
    for member in rooms.members_with_membership(room_id, "join")? {
        if !accounts.is_local(&member) || !accounts.is_guest(&member)? {
            continue;
        }
        let leave =
            PduTemplate::state("m.room.member", member.as_str(), serde_json::json!({"membership": "leave"}));
        if let Err(err) = rooms.send(room_id, &member, leave, None).await {
            tracing::warn!(%room_id, guest = %member, "could not remove a guest after guest access was revoked: {err}");
        }
    }
    Ok(())
}
