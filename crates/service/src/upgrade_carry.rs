//! A user's own data about a room follows them into its upgrade: when they
//! join the new room (the upgrader on creating it), its tags, its place in
//! `m.direct` and a room push rule (a muted room stays muted) are copied
//! from the predecessor, where the new room has none of its own.

use estuary_core::Result;
use ruma::{RoomId, UserId};
use serde_json::Value as JsonValue;

use crate::{account_data::AccountData, push::PushRules};

pub fn carry_over(
    account_data: &AccountData,
    push: &PushRules,
    user: &UserId,
    old: &RoomId,
    new: &RoomId,
) -> Result<()> {
    if let Ok(tags) = account_data.get(user, Some(old), "m.tag")
        && account_data.get(user, Some(new), "m.tag").is_err()
    {
        account_data.set_internal(user, Some(new), "m.tag", tags)?;
    }
    if let Ok(direct) = account_data.get(user, None, "m.direct") {
        let mut direct: JsonValue = serde_json::from_str(direct.get())?;
        let mut changed = false;
        for rooms in direct.as_object_mut().into_iter().flat_map(|d| d.values_mut()) {
            if let Some(list) = rooms.as_array_mut()
                && list.iter().any(|r| r == old.as_str())
                && !list.iter().any(|r| r == new.as_str())
            {
                list.push(new.as_str().into());
                changed = true;
            }
        }
        if changed {
            account_data.set_internal(user, None, "m.direct", serde_json::value::to_raw_value(&direct)?)?;
        }
    }
    push.copy_room_rule(user, old, new)
}
