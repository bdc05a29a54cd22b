//! A device's whole life across services: deleting one removes its session,
//! keys and queued to-device messages together. Also dehydrated devices
//! (MSC3814): a device a client parks on the server, encrypted with a key
//! only the user has, so messages sent while all their devices were offline
//! can be decrypted later.

use std::sync::Arc;

use estuary_core::{Error, Result};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::Value as JsonValue;

use crate::{
    accounts::Accounts, e2ee::E2ee, push::PushRules, storage_error::StorageResultExt, to_device::ToDevice,
};

/// What a client uploads to dehydrate a device.
pub struct DehydratedDevice {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    /// Opaque to the server: the pickled device, encrypted by the client.
    pub device_data: JsonValue,
    pub device_keys: JsonValue,
    pub one_time_keys: Vec<(String, JsonValue)>,
    pub fallback_keys: Vec<(String, JsonValue)>,
}

pub struct Devices {
    accounts: Arc<Accounts>,
    e2ee: Arc<E2ee>,
    to_device: Arc<ToDevice>,
    push: Arc<PushRules>,
    rooms: Arc<crate::rooms::Rooms>,
    sliding_connections: Arc<crate::sync::connections::Connections>,
    dehydrated: Table<String, Json<(String, JsonValue)>>,
}

impl Devices {
    pub fn new(
        db: &Db,
        accounts: Arc<Accounts>,
        e2ee: Arc<E2ee>,
        to_device: Arc<ToDevice>,
        push: Arc<PushRules>,
        rooms: Arc<crate::rooms::Rooms>,
        sliding_connections: Arc<crate::sync::connections::Connections>,
    ) -> Result<Self> {
        let dehydrated = db.table("userid_dehydrateddevice").db()?;
        Ok(Self { accounts, e2ee, to_device, push, rooms, sliding_connections, dehydrated })
    }

    /// Delete devices with their sessions, keys, pending messages, the
    /// pushers and peeks they created and their sliding sync connections.
    /// Unknown IDs are skipped, so this also cleans up after an account
    /// operation that already ended the sessions.
    pub fn delete(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        self.accounts.delete_devices(user_id, device_ids)?;
        self.push.delete_device_pushers(user_id, device_ids)?;
        for device_id in device_ids {
            self.e2ee.delete_device_keys(user_id, device_id)?;
            self.to_device.purge_device(user_id, device_id)?;
            self.rooms.delete_device_peeks(user_id, device_id)?;
            self.sliding_connections.forget_device(&(user_id.to_owned(), device_id.clone()));
            if self.dehydrated_device_id(user_id)?.as_deref() == Some(device_id.as_str()) {
                self.dehydrated.delete(&user_id.to_string()).db()?;
            }
        }
        Ok(())
    }

    /// Every device of the user.
    pub fn delete_all(&self, user_id: &UserId) -> Result<()> {
        let ids: Vec<_> = self.accounts.devices(user_id)?.into_iter().map(|(id, _)| id).collect();
        self.delete(user_id, &ids)
    }

    /// `PUT /dehydrated_device`: replaces the user's previous dehydrated device.
    pub fn put_dehydrated(&self, user_id: &UserId, device: DehydratedDevice) -> Result<()> {
        if self.accounts.device(user_id, &device.device_id)?.is_some()
            && self.dehydrated_device_id(user_id)?.as_deref() != Some(device.device_id.as_str())
        {
            return Err(Error::invalid_param("A device with this ID already exists"));
        }
        if let Some(old) = self.dehydrated_device_id(user_id)? {
            self.delete(user_id, &[old.into()])?;
        }
        self.accounts.create_device_without_session(user_id, &device.device_id, device.display_name)?;
        self.e2ee.upload(
            user_id,
            &device.device_id,
            Some(device.device_keys),
            device.one_time_keys,
            device.fallback_keys,
        )?;
        let row = Json((device.device_id.to_string(), device.device_data));
        self.dehydrated.put(&user_id.to_string(), &row).db()
    }

    /// `GET /dehydrated_device`: its ID and data.
    pub fn dehydrated(&self, user_id: &UserId) -> Result<(OwnedDeviceId, JsonValue)> {
        let Json((device_id, data)) = self
            .dehydrated
            .get(&user_id.to_string())
            .db()?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        Ok((device_id.into(), data))
    }

    /// `DELETE /dehydrated_device`: returns the ID of the deleted device.
    pub fn delete_dehydrated(&self, user_id: &UserId) -> Result<OwnedDeviceId> {
        let (device_id, _) = self.dehydrated(user_id)?;
        self.delete(user_id, std::slice::from_ref(&device_id))?;
        Ok(device_id)
    }

    /// `POST /dehydrated_device/{deviceId}/events`: the device's to-device
    /// messages a page at a time; passing a page's `next_batch` acknowledges it.
    pub fn dehydrated_events(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        next_batch: Option<&str>,
    ) -> Result<(Vec<JsonValue>, Option<String>)> {
        if self.dehydrated_device_id(user_id)?.as_deref() != Some(device_id.as_str()) {
            return Err(Error::forbidden("Not the user's dehydrated device"));
        }
        let after = next_batch
            .map(|token| token.parse::<u64>().map_err(|_| Error::invalid_param("Invalid next_batch")))
            .transpose()?;
        let (events, last) = self.to_device.page_after(user_id, device_id, after)?;
        Ok((events, last.or(after).map(|p| p.to_string())))
    }

    fn dehydrated_device_id(&self, user_id: &UserId) -> Result<Option<String>> {
        Ok(self.dehydrated.get(&user_id.to_string()).db()?.map(|Json((id, _))| id))
    }
}
