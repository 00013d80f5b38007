//! State shared by gateway instances: the Redis connection ([`redis`]) that
//! cluster-wide features (`rate_limit` with `store: redis`) decide through. turnpike
//! keeps no database of its own; Redis holds only counters that may be lost (a restart
//! of Redis resets them, and limits start again from full buckets).

pub mod redis;
