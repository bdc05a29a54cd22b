//! Deactivating an account, by its user or by an admin: one sequence, so
//! both leave the same state behind.

use estuary_core::Result;
use ruma::UserId;

use crate::Services;

impl Services {
    /// Deactivate a local account: it leaves every room it is in, invited to
    /// or knocking on, every device is logged out, its profile is cleared,
    /// and with `erase` its messages are hidden from users who join later.
    pub async fn deactivate_user(&self, user_id: &UserId, erase: bool) -> Result<()> {
        self.leave_all_rooms(user_id).await?;
        self.devices.delete_all(user_id)?;
        self.accounts.deactivate(user_id)?;
        self.profile.clear(user_id)?;
        if erase {
            self.rooms.erase_user(user_id)?;
        }
        Ok(())
    }

    /// Leave every room, as deactivation does. A room whose leave fails (a
    /// remote server down for an invite's decline) is logged and skipped:
    /// the account is deactivated regardless.
    async fn leave_all_rooms(&self, user_id: &UserId) -> Result<()> {
        let mut rooms = Vec::new();
        for membership in ["join", "invite", "knock"] {
            rooms.extend(self.rooms.rooms_with_membership(user_id, membership)?);
        }
        for room_id in rooms {
            let left = if self.rooms.pending_out_of_band(user_id, &room_id)?.is_some() {
                self.federation.decline_remote_membership(&room_id, user_id, None).await
            } else {
                self.rooms.leave(&room_id, user_id, None).await
            };
            if let Err(err) = left {
                tracing::warn!(%user_id, %room_id, "deactivated user could not leave the room: {err}");
            }
        }
        Ok(())
    }
}
