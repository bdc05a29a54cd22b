//! Push rule evaluation of new events for local members: what becomes a
//! notification and a highlight (for unread counts and `/notifications`).

use estuary_core::Result;
use estuary_storage::codec::Json;
use ruma::{
    UInt, UserId,
    api::client::profile::ProfileFieldName,
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};
use serde::de::IgnoredAny;
use serde_json::json;

use std::sync::Arc;

use super::{
    ClientEvent, Rooms, StoredPdu,
    relations::RelatesTo,
    unread::{NewRow, UnreadCounts},
};
use crate::storage_error::StorageResultExt;

/// A notification row: (room ID, event ID, highlight, thread root, actions).
pub type NotificationRow = (String, String, bool, Option<String>, serde_json::Value);
/// A page of `/notifications`: rows with their stream positions, and the next `from`.
pub type NotificationPage = (Vec<(u64, NotificationRow)>, Option<u64>);

impl Rooms {
    /// Evaluate `event` against the rules of every other local joined
    /// member, and of a local user it invites (`.m.rule.invite_for_me`).
    pub(super) async fn notify_members(&self, stored: &StoredPdu) -> Result<()> {
        let pdu = stored.pdu()?;
        let members = self.members_with_membership(&pdu.room_id, "join")?;
        let local = |m: &ruma::OwnedUserId| *m != pdu.sender && m.server_name() == self.config.server_name;
        let mut recipients: Vec<ruma::OwnedUserId> = members.iter().filter(|m| local(m)).cloned().collect();
        if let Some(invitee) = invited_user(&pdu).filter(local)
            && !recipients.contains(&invitee)
        {
            recipients.push(invitee);
        }
        if recipients.is_empty() {
            return Ok(());
        }
        let room = self.require_room(&pdu.room_id)?;
        let state = self.state.load(stored.state_after)?;
        let member_count = UInt::new(members.len() as u64).unwrap_or_default();
        let power = PushConditionPowerLevelsCtx::from(self.power_levels(&state, &room.room_version)?);
        let event = self.client_event(stored.clone(), None)?;
        let raw: Raw<serde_json::Value> = Raw::from_json(serde_json::value::to_raw_value(&event)?);
        let thread = stored.json.client().content_as::<RelatesTo>().and_then(|r| r.thread_root());
        let mut batch = self.db.batch();
        let mut notified = Vec::new();
        // Those whose unread counts in the room the batch changes.
        let mut counted = Vec::new();
        for member in &recipients {
            let display_name = self
                .profiles
                .get_field(member, &ProfileFieldName::DisplayName)
                .ok()
                .and_then(|v| v.value().as_str().map(str::to_owned))
                .unwrap_or_else(|| member.localpart().to_owned());
            let mut ctx =
                PushConditionRoomCtx::new(pdu.room_id.clone(), member_count, member.clone(), display_name);
            ctx.power_levels = Some(power.clone());
            let ruleset = self.push.cached_ruleset(member)?;
            let actions = ruleset.get_actions(&raw, &ctx).await;
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            let highlight = actions.iter().any(Action::is_highlight);
            self.push_to_gateways(member, &event, &pdu.room_id, actions, highlight)?;
            let row: NotificationRow = (
                pdu.room_id.to_string(),
                pdu.event_id.to_string(),
                highlight,
                thread.clone(),
                json!(actions),
            );
            // An invitee's notification is theirs in `/notifications`, but not
            // an unread message of a room they have not joined.
            if members.contains(member) {
                batch.put(
                    &self.useridroomidstream_notification,
                    &(member.to_string(), pdu.room_id.to_string(), stored.stream),
                    &Json(row.clone()),
                );
                counted.push(NewRow {
                    user: member,
                    room_id: &pdu.room_id,
                    stream: stored.stream,
                    thread: thread.clone(),
                    highlight,
                });
            }
            batch.put(&self.useridstream_notification, &(member.to_string(), stored.stream), &Json(row));
            notified.push(member.clone());
        }
        if !batch.is_empty() {
            let write = self.unread.begin_write();
            batch.commit().db()?;
            write.finish(counted);
            self.streams.notify(notified.iter().map(|u| &**u));
        }
        Ok(())
    }

    /// Queue the notification for the member's pushers.
    fn push_to_gateways(
        &self,
        member: &UserId,
        event: &ClientEvent,
        room_id: &ruma::RoomId,
        actions: &[Action],
        highlight: bool,
    ) -> Result<()> {
        if self.push.pushers(member)?.is_empty() {
            return Ok(());
        }
        let mut tweaks = serde_json::Map::new();
        for action in actions {
            if let Action::SetTweak(tweak) = action
                && let Ok(serde_json::Value::Object(map)) = serde_json::to_value(tweak)
                && let (Some(name), value) = (map.get("set_tweak").and_then(|n| n.as_str()), map.get("value"))
            {
                tweaks.insert(name.to_owned(), value.cloned().unwrap_or(serde_json::Value::Bool(true)));
            }
        }
        // The badge: rooms with unread notifications, this one included.
        let unread = self.rooms_with_unread(member, Some(room_id))? + 1;
        let summary = self.room_summary(room_id)?;
        let room_alias = summary["canonical_alias"].as_str().map(str::to_owned);
        let sender = event.sender().and_then(|s| UserId::parse(s).ok());
        let sender_display_name = sender.and_then(|s| {
            self.profiles
                .get_field(&s, &ProfileFieldName::DisplayName)
                .ok()
                .and_then(|v| v.value().as_str().map(str::to_owned))
        });
        let notification = crate::push::PushNotification {
            unread,
            highlight,
            tweaks: serde_json::Value::Object(tweaks),
            sender_display_name,
            // A room without a name is called by its alias, as clients show it.
            room_name: summary["name"].as_str().map(str::to_owned).or_else(|| room_alias.clone()),
            room_alias,
        };
        self.push.push(member, &serde_json::to_value(event)?, &notification)
    }

    /// How many of the user's joined rooms, other than `except`, have unread
    /// notifications: the badge a push gateway shows.
    pub fn rooms_with_unread(&self, user_id: &UserId, except: Option<&ruma::RoomId>) -> Result<u64> {
        let mut count = 0;
        for room_id in self.rooms_with_membership(user_id, "join")? {
            if Some(&*room_id) != except && self.has_unread(user_id, &room_id)? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether the user has notifications in the room after their read receipt.
    pub fn has_unread(&self, user_id: &UserId, room_id: &ruma::RoomId) -> Result<bool> {
        let after = self.read_position(user_id, room_id)?;
        Ok(!self.notifications_after(user_id, room_id, after, 1)?.is_empty())
    }

    /// After a read receipt that cleared a room's notifications, tell the
    /// user's push gateways the new badge count.
    pub fn push_badge(&self, user_id: &UserId) -> Result<()> {
        self.push.push_badge(user_id, self.rooms_with_unread(user_id, None)?)
    }

    /// The stream position of the latest event the user has read in a room
    /// (their `m.read` or `m.read.private` receipt on the main timeline).
    pub fn read_position(&self, user_id: &UserId, room_id: &ruma::RoomId) -> Result<u64> {
        let receipts: estuary_storage::Table<crate::ephemeral::ReceiptKey, Json<(String, u64)>> =
            self.db.table("roomiduserreceipt_receipt").db()?;
        let mut position = 0;
        for kind in ["m.read", "m.read.private"] {
            for thread in ["", "main"] {
                let key = (room_id.to_string(), user_id.to_string(), kind.to_owned(), thread.to_owned());
                if let Some(Json((event_id, _))) = receipts.get(&key).db()?
                    && let Ok(event_id) = ruma::EventId::parse(&event_id)
                    && let Some(stored) = self.stored(&event_id)?
                {
                    position = position.max(stored.stream);
                }
            }
        }
        Ok(position)
    }

    /// Notifications in a room after stream position `after`: (count,
    /// highlights) per thread root, `None` for the main timeline.
    pub fn unread_counts(
        &self,
        user: &UserId,
        room_id: &ruma::RoomId,
        after: u64,
    ) -> Result<Arc<UnreadCounts>> {
        self.unread.get_or_count(user, room_id, after, || self.count_unread(user, room_id, after))
    }

    fn count_unread(&self, user: &UserId, room_id: &ruma::RoomId, after: u64) -> Result<UnreadCounts> {
        // Only the two fields counted are decoded, not the row's IDs and actions.
        type Counted = (IgnoredAny, IgnoredAny, bool, Option<String>, IgnoredAny);
        let (prefix, from) = notification_range(user, room_id, after);
        let mut counts = UnreadCounts::new();
        self.useridroomidstream_notification
            .visit_from(&prefix, Some(&from), false, 10_000, |_, value| {
                let (_, _, highlight, thread, _) = estuary_storage::codec::decode_json::<Counted>(value)
                    .map_err(|source| estuary_storage::StorageError::Codec {
                        table: "useridroomidstream_notification",
                        source,
                    })?;
                let entry = counts.entry(thread).or_default();
                entry.0 += 1;
                entry.1 += u64::from(highlight);
                Ok(())
            })
            .db()?;
        Ok(counts)
    }

    /// Up to `limit` of the user's notification rows in a room after stream position `after`.
    fn notifications_after(
        &self,
        user: &UserId,
        room_id: &ruma::RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Json<NotificationRow>>> {
        let (prefix, from) = notification_range(user, room_id, after);
        let rows = self.useridroomidstream_notification.scan_from(&prefix, Some(&from), false, limit).db()?;
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }

    /// `/notifications`: newest first, before stream position `before`.
    pub fn notifications(
        &self,
        user: &UserId,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<NotificationPage> {
        let prefix = estuary_storage::Key::encode(&(user.to_string(),));
        let from = before.map(|b| estuary_storage::Key::encode(&(user.to_string(), b.saturating_sub(1))));
        let mut rows = Vec::new();
        let mut next = None;
        for ((_, stream), Json(row)) in
            self.useridstream_notification.scan_from(&prefix, from.as_deref(), true, 5_000).db()?
        {
            if only_highlight && !row.2 {
                continue;
            }
            if rows.len() == limit {
                next = Some(stream + 1);
                break;
            }
            rows.push((stream, row));
        }
        Ok((rows, next))
    }
}

/// The local-or-remote user a member event invites (not the sender).
fn invited_user(pdu: &estuary_events::Pdu) -> Option<ruma::OwnedUserId> {
    if pdu.kind != ruma::events::TimelineEventType::RoomMember {
        return None;
    }
    let invitee = UserId::parse(pdu.state_key.as_deref()?).ok()?;
    (pdu.content_value()["membership"] == "invite" && invitee != pdu.sender).then_some(invitee)
}

/// The keys of `useridroomidstream_notification` for the user's rows in a
/// room after stream position `after`: the room's prefix and the first key.
fn notification_range(user: &UserId, room_id: &ruma::RoomId, after: u64) -> (Vec<u8>, Vec<u8>) {
    let (user, room) = (user.to_string(), room_id.to_string());
    (
        estuary_storage::Key::encode(&(user.clone(), room.clone())),
        estuary_storage::Key::encode(&(user, room, after + 1)),
    )
}
