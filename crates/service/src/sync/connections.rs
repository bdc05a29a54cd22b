//! Sliding sync connection state: per (user, device, `conn_id`), what the
//! client already has, kept for the last two positions it was given.
//!
//! A request names the position it continues from (`pos`). Its answer is
//! computed from the state stored for that position and stored under a new
//! one. Using a position drops the older ones (the client has moved on), so
//! a client that sends the same `pos` again (a retry, or a request it
//! cancelled, perhaps still running) gets an equivalent answer, every
//! answer handed out stays usable, and at most `POSITIONS` are kept. State lives in
//! memory: after a restart every `pos` is unknown and clients start over.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};

/// Positions one connection keeps (the one in use and answers from it).
const POSITIONS: usize = 4;
/// Connections one device may keep; the least recently used goes first.
const CONNECTIONS_PER_DEVICE: usize = 8;
/// Devices with connections; beyond it the least recently used device's go.
const DEVICES: usize = 20_000;

/// What one connection has sent, as of one position.
#[derive(Clone, Debug, Default)]
pub struct ConnectionState {
    /// The stream position the answer was read at (0: nothing sent yet).
    pub stream: u64,
    pub rooms: HashMap<OwnedRoomId, RoomSent>,
    /// Each list's `count` as last sent.
    pub list_counts: BTreeMap<String, u64>,
}

/// What the client has of one room.
#[derive(Clone, Debug, Default)]
pub struct RoomSent {
    /// The stream position up to which its timeline and state were sent.
    pub sent_to: u64,
    /// The user's membership then (a leave is shown once, then dropped).
    pub membership: &'static str,
    /// The room's `required_state` and `timeline_limit`, hashed: a new
    /// configuration sends the room again from scratch.
    pub config: u64,
    /// Notification and highlight counts as last sent.
    pub unread: (u64, u64),
    /// Member events sent for `$LAZY` (event IDs), so each goes once;
    /// shared between positions until it changes.
    pub lazy_members: Arc<HashSet<String>>,
}

#[derive(Default)]
struct Connection {
    /// Position → state; at most the one a request came from and its answer.
    states: Vec<(u64, Arc<ConnectionState>)>,
    last_used: u64,
}

type DeviceKey = (OwnedUserId, OwnedDeviceId);

pub struct Connections {
    devices: Mutex<HashMap<DeviceKey, HashMap<String, Connection>>>,
    /// Positions are unique across connections; also the LRU clock.
    next_position: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        // Positions start at a random point, so a `pos` from before a
        // restart is unknown rather than, by chance, another's.
        Self { devices: Mutex::default(), next_position: AtomicU64::new(rand::random::<u32>() as u64 + 1) }
    }
}

impl Connections {
    /// The state stored for `pos` (an empty one without `pos`: a new
    /// connection, whose older states are dropped); `None` when the
    /// position is unknown.
    pub fn resume(&self, key: &DeviceKey, conn_id: &str, pos: Option<&str>) -> Option<Arc<ConnectionState>> {
        let mut devices = self.devices.lock().expect("sliding sync connections");
        let Some(pos) = pos else {
            if let Some(connections) = devices.get_mut(key) {
                connections.remove(conn_id);
            }
            return Some(Arc::default());
        };
        let position: u64 = pos.parse().ok()?;
        let connection = devices.get_mut(key).and_then(|c| c.get_mut(conn_id))?;
        connection.last_used = self.next_position.load(Ordering::Relaxed);
        let state = connection.states.iter().find(|(p, _)| *p == position).map(|(_, s)| s.clone())?;
        connection.states.retain(|(p, _)| *p >= position);
        Some(state)
    }

    /// Store the answer to a request and return its position.
    pub fn store(&self, key: &DeviceKey, conn_id: &str, state: ConnectionState) -> u64 {
        let position = self.next_position.fetch_add(1, Ordering::Relaxed);
        let mut devices = self.devices.lock().expect("sliding sync connections");
        if !devices.contains_key(key) && devices.len() >= DEVICES {
            evict_least_recent(&mut devices, |c| c.values().map(|c| c.last_used).max().unwrap_or(0));
        }
        let connections = devices.entry(key.clone()).or_default();
        if !connections.contains_key(conn_id) && connections.len() >= CONNECTIONS_PER_DEVICE {
            evict_least_recent(connections, |c| c.last_used);
        }
        let connection = connections.entry(conn_id.to_owned()).or_default();
        if connection.states.len() >= POSITIONS {
            // The first is the position in use; the oldest answer from it goes.
            connection.states.remove(1);
        }
        connection.states.push((position, Arc::new(state)));
        connection.last_used = position;
        position
    }

    /// Drop every connection of a deleted device.
    pub fn forget_device(&self, key: &DeviceKey) {
        self.devices.lock().expect("sliding sync connections").remove(key);
    }

    /// Connections held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.devices.lock().expect("sliding sync connections").values().map(HashMap::len).sum()
    }
}

fn evict_least_recent<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, age: impl Fn(&V) -> u64) {
    if let Some(oldest) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| k.clone()) {
        map.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        (ruma::owned_user_id!("@alice:localhost"), "DEV".into())
    }

    #[test]
    fn a_position_can_be_replayed_and_state_stays_bounded() {
        let connections = Connections::default();
        let first = connections.store(&key(), "main", ConnectionState { stream: 5, ..Default::default() });
        let first = first.to_string();
        // The same position again and again: every answer comes from it, the
        // answers handed out stay usable, and the state stays bounded.
        let mut answers = Vec::new();
        for stream in 6..20 {
            let base = connections.resume(&key(), "main", Some(&first)).expect("known position");
            assert_eq!(base.stream, 5);
            answers.push(connections.store(&key(), "main", ConnectionState { stream, ..Default::default() }));
        }
        assert!(connections.devices.lock().unwrap()[&key()]["main"].states.len() <= POSITIONS);
        let last = answers.last().unwrap().to_string();
        assert_eq!(connections.resume(&key(), "main", Some(&last)).expect("the last answer").stream, 19);
        // Using it drops the older positions.
        assert!(connections.resume(&key(), "main", Some(&first)).is_none());
    }

    #[test]
    fn unknown_positions_and_deleted_devices_are_refused() {
        let connections = Connections::default();
        assert!(connections.resume(&key(), "main", Some("12")).is_none());
        assert!(connections.resume(&key(), "main", Some("not a number")).is_none());
        let pos = connections.store(&key(), "main", ConnectionState::default()).to_string();
        assert!(
            connections.resume(&key(), "other", Some(&pos)).is_none(),
            "positions belong to a connection"
        );
        connections.forget_device(&key());
        assert!(connections.resume(&key(), "main", Some(&pos)).is_none());
    }

    #[test]
    fn a_device_keeps_a_bounded_number_of_connections() {
        let connections = Connections::default();
        for i in 0..(CONNECTIONS_PER_DEVICE + 3) {
            connections.store(&key(), &format!("conn{i}"), ConnectionState::default());
        }
        assert_eq!(connections.len(), CONNECTIONS_PER_DEVICE);
    }
}
