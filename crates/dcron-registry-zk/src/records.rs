//! Records (pause markers, trigger-now requests, task status): one znode per record,
//! `{root}/records/{kind}/{key}`, each written whole by one `setData` or one `create`.

use dcron_core::{check_record_key, check_records, Error, RecordKind, Registry, Result};
use futures::{StreamExt, TryStreamExt};
use zookeeper_async::{CreateMode, ZkError};

use crate::conn::BACKEND;
use crate::keys::unescape;
use crate::registry::{ZkRegistry, CONCURRENCY};

impl ZkRegistry {
    /// Writes one record: replaces the data of an existing znode, or creates it (and the kind's
    /// directory on first use).
    async fn put_record(&self, kind: RecordKind, key: &str, data: &[u8]) -> Result<()> {
        let path = self.layout().record(kind, key);
        let conn = self.conn();
        for _ in 0..5 {
            if conn
                .set_data(&path, data.to_vec(), None, &[ZkError::NoNode])
                .await?
                .is_ok()
            {
                return Ok(());
            }
            match conn
                .create(
                    &path,
                    data.to_vec(),
                    CreateMode::Persistent,
                    None,
                    &[ZkError::NodeExists, ZkError::NoNode],
                )
                .await?
            {
                Ok(_) => return Ok(()),
                // Created by someone else meanwhile: replace its data on the next turn.
                Err(ZkError::NodeExists) => {}
                // The kind's directory is missing (first record, or cleaned up): create it.
                Err(_) => {
                    for dir in [
                        self.layout().records_dir(),
                        self.layout().records_kind_dir(kind),
                    ] {
                        conn.ensure_dir(&dir).await?;
                    }
                }
            }
        }
        Err(Error::Backend {
            backend: BACKEND,
            message: format!(
                "record `{path}` could not be written (its directory keeps vanishing)"
            ),
            source: None,
        })
    }

    pub(crate) async fn put_record_batch(
        &self,
        kind: RecordKind,
        records: &[(String, Vec<u8>)],
    ) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        futures::stream::iter(0..records.len())
            .map(|i| self.put_record(kind, &records[i].0, &records[i].1))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub(crate) async fn get_one_record(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let path = self.layout().record(kind, key);
        match self.conn().get_data(&path).await? {
            Some((data, _)) => {
                dcron_core::backend::check_stored_size(&path, data.len(), crate::MAX_VALUE_BYTES)?;
                Ok(Some(data))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn list_kind_records(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.layout().records_kind_dir(kind);
        let mut out = Vec::new();
        for f in self.fetch_dir(&dir).await? {
            match f.key.rsplit('/').next().and_then(unescape) {
                Some(_) if f.data.len() > crate::MAX_VALUE_BYTES => tracing::warn!(
                    znode = %f.key,
                    bytes = f.data.len(),
                    "zookeeper: skipping a record larger than the registry stores"
                ),
                Some(key) => out.push((key, f.data)),
                None => tracing::warn!(
                    znode = %f.key,
                    "zookeeper: skipping a record whose znode name dcron did not write"
                ),
            }
        }
        Ok(out)
    }

    pub(crate) async fn delete_one_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let path = self.layout().record(kind, key);
        // Any version: among concurrent deleters the server answers NoNode to all but one.
        Ok(self
            .conn()
            .delete(&path, None, &[ZkError::NoNode])
            .await?
            .is_ok())
    }

    /// Deletes every record of every kind (the kind directories stay).
    pub(crate) async fn delete_all_records(&self) -> Result<()> {
        let records = self.layout().records_dir();
        let conn = self.conn();
        for kind_dir in conn.children(&records).await? {
            let dir = format!("{records}/{kind_dir}");
            let children = conn.children(&dir).await?;
            futures::stream::iter(children)
                .map(|c| {
                    let path = format!("{dir}/{c}");
                    async move {
                        conn.delete(&path, None, &[ZkError::NoNode])
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(())
    }
}
