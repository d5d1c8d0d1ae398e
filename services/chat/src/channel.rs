//! Channel ids and who may use a channel.
//!
//! - `room:<name>`: public rooms (`global`, `lfg-eu`): anyone not banned may join and read.
//! - `group:<uuid>`: members only; the member list is managed over REST by the owner and
//!   moderators.
//! - `dm:<a>:<b>`: the two players, ids in ascending order, so the pair always has the same id.

use platform::ApiError;

/// A parsed channel id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A public room.
    Room(String),
    /// A group by id.
    Group(String),
    /// A direct conversation between two accounts (ascending).
    Direct(String, String),
}

fn valid_room(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_account(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Channel {
    /// Parses `room:...`, `group:...` or `dm:...:...`.
    pub fn parse(id: &str) -> Result<Channel, ApiError> {
        let bad = || ApiError::invalid("channel", "channel must be room:<name>, group:<id> or dm:<account>:<account>");
        let (kind, rest) = id.split_once(':').ok_or_else(bad)?;
        match kind {
            "room" if valid_room(rest) => Ok(Channel::Room(rest.to_owned())),
            "group" if uuid::Uuid::try_parse(rest).is_ok() => Ok(Channel::Group(rest.to_owned())),
            "dm" => {
                let (a, b) = rest.split_once(':').ok_or_else(bad)?;
                if !valid_account(a) || !valid_account(b) || a >= b {
                    return Err(bad());
                }
                Ok(Channel::Direct(a.to_owned(), b.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    /// The stable id of the direct conversation between two accounts.
    pub fn direct(a: &str, b: &str) -> String {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        format!("dm:{low}:{high}")
    }

    /// The id, as clients and the database write it.
    pub fn id(&self) -> String {
        match self {
            Channel::Room(name) => format!("room:{name}"),
            Channel::Group(id) => format!("group:{id}"),
            Channel::Direct(a, b) => format!("dm:{a}:{b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_parse_and_direct_ids_are_stable() {
        assert_eq!(Channel::parse("room:lfg-eu").expect("room"), Channel::Room("lfg-eu".into()));
        let group = "0190c6a2-7d1e-7c3b-9a4e-3f2b1c0d9e8f";
        assert_eq!(Channel::parse(&format!("group:{group}")).expect("group"), Channel::Group(group.into()));
        assert_eq!(Channel::direct("b", "a"), Channel::direct("a", "b"));
        assert_eq!(Channel::parse(&Channel::direct("bob", "ana")).expect("dm"), Channel::Direct("ana".into(), "bob".into()));
        for bad in ["", "room:", "room:Global", "room:a b", "group:x", "dm:a", "dm:b:a", "dm:a:a", "chan:x"] {
            assert!(Channel::parse(bad).is_err(), "{bad:?}");
        }
    }
}
