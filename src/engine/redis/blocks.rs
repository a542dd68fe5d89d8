//! Blocks in Redis (section 11), when no database keeps them: per user a set of whom they
//! blocked (`Keys::blocks`) and of who blocked them (`Keys::blockers`), each in its user's
//! slot. The limit is checked and the block added in one script on the blocker's set; the
//! other side's set follows (another slot on Redis Cluster).

use super::*;

/// `KEYS[1]` whom the user blocked; `ARGV` 1 the other, 2 the most allowed. Returns 1 added,
/// 0 already there, -1 too many.
const BLOCK: &str = "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end \
    if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end \
    redis.call('SADD', KEYS[1], ARGV[1]) return 1";

fn ids(v: Vec<String>) -> Vec<UserId> {
    let mut out: Vec<UserId> = v.iter().filter_map(|s| UserId::parse(s).ok()).collect();
    out.sort();
    out
}

#[async_trait]
impl BlockStore for RedisEngine {
    async fn block(
        &self,
        user: &UserId,
        other: &UserId,
        max: usize,
    ) -> Result<Blocked, EngineError> {
        let r: i64 = self
            .client
            .custom(
                CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false),
                vec![
                    BLOCK.to_string(),
                    "1".into(),
                    self.keys.blocks(user.as_str()),
                    other.to_string(),
                    max.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        match r {
            1 => {
                let _: i64 = self
                    .client
                    .custom(
                        cmd("SADD"),
                        vec![self.keys.blockers(other.as_str()), user.to_string()],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(Blocked::Added)
            }
            0 => Ok(Blocked::Already),
            _ => Ok(Blocked::TooMany),
        }
    }

    async fn unblock(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let had: i64 = self
            .client
            .custom(
                cmd("SREM"),
                vec![self.keys.blocks(user.as_str()), other.to_string()],
            )
            .await
            .map_err(unavailable)?;
        let _: i64 = self
            .client
            .custom(
                cmd("SREM"),
                vec![self.keys.blockers(other.as_str()), user.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(had == 1)
    }

    async fn blocks(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let there: i64 = self
            .client
            .custom(
                cmd("SISMEMBER"),
                vec![self.keys.blocks(user.as_str()), other.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(there == 1)
    }

    async fn blocks_of(&self, user: &UserId) -> Result<(Vec<UserId>, Vec<UserId>), EngineError> {
        let mine: Vec<String> = self
            .client
            .custom(cmd("SMEMBERS"), vec![self.keys.blocks(user.as_str())])
            .await
            .map_err(unavailable)?;
        let theirs: Vec<String> = self
            .client
            .custom(cmd("SMEMBERS"), vec![self.keys.blockers(user.as_str())])
            .await
            .map_err(unavailable)?;
        Ok((ids(mine), ids(theirs)))
    }
}
