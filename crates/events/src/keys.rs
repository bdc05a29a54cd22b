//! The server's ed25519 signing key.

use ruma::{
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap},
};

/// The signing key with its PKCS#8 document (what gets persisted).
pub struct ServerSigningKey {
    pub keypair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl ServerSigningKey {
    /// A new random key with the given version (the part after `ed25519:`).
    pub fn generate(version: &str) -> Result<Self, String> {
        let pkcs8 = Ed25519KeyPair::generate().to_vec();
        Self::from_pkcs8(pkcs8, version)
    }

    pub fn from_pkcs8(pkcs8: Vec<u8>, version: &str) -> Result<Self, String> {
        let keypair = Ed25519KeyPair::from_der(&pkcs8, version.to_owned())
            .map_err(|e| format!("invalid signing key: {e}"))?;
        Ok(Self { keypair, pkcs8 })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    /// The public key in unpadded standard base64, as `/_matrix/key/v2/server` shows it.
    pub fn public_key_base64(&self) -> String {
        Base64::<ruma::serde::base64::Standard, _>::new(self.keypair.public_key()).encode()
    }

    /// A key map holding only this server's key, for verifying our own events.
    pub fn public_key_map(&self, server_name: &str) -> PublicKeyMap {
        let mut map = PublicKeyMap::new();
        map.entry(server_name.to_owned())
            .or_default()
            .insert(self.key_id(), Base64::new(self.keypair.public_key().to_vec()));
        map
    }
}
