//! Update expressions with every name and value behind a placeholder.

use super::*;

/// goes through a placeholder, so keys, owner names and reserved words need
/// no quoting.
#[derive(Default)]
pub(super) struct Update {
    sets: Vec<String>,
    removes: Vec<String>,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    /// The placeholder of attribute name `name`.
    pub(super) fn name(&mut self, name: &str) -> String {
        if let Some((placeholder, _)) = self.names.iter().find(|(_, known)| *known == name) {
            return placeholder.clone();
        }
        let placeholder = format!("#n{}", self.names.len());
        self.names.insert(placeholder.clone(), name.to_owned());
        placeholder
    }

    /// A placeholder for `value`.
    pub(super) fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    pub(super) fn set(&mut self, path: String, operand: String) {
        self.sets.push(format!("{path} = {operand}"));
    }

    pub(super) fn set_value(&mut self, name: &str, value: AttributeValue) {
        let path = self.name(name);
        let operand = self.value(value);
        self.set(path, operand);
    }

    pub(super) fn remove(&mut self, name: &str) {
        let path = self.name(name);
        self.removes.push(path);
    }

    pub(super) fn remove_name(&mut self, path: String) {
        self.removes.push(path);
    }

    pub(super) fn condition(&mut self, condition: String) {
        self.condition = Some(condition);
    }

    /// Adds to the condition that `lease_id`'s expiry is still
    /// `expires_at`: an entry counted as expired was not renewed (or
    /// replaced) since it was read.
    pub(super) fn unchanged_expiry(&mut self, lease_id: LeaseId, expires_at: u64) {
        let expiry = self.name(&expiry_attribute(lease_id));
        let seen = self.value(number(expires_at));
        self.and_condition(format!("{expiry} = {seen}"));
    }

    /// Removes the entry `lease_id`, counted as expired at `expires_at`,
    /// if its expiry is still that (see [`unchanged_expiry`](Self::unchanged_expiry)).
    pub(super) fn remove_expired(&mut self, lease_id: LeaseId, expires_at: u64) {
        self.remove(&entry_attribute(lease_id));
        self.remove(&seq_attribute(lease_id));
        self.unchanged_expiry(lease_id, expires_at);
        self.remove(&expiry_attribute(lease_id));
    }

    pub(super) fn and_condition(&mut self, condition: String) {
        self.condition = Some(match self.condition.take() {
            Some(first) => format!("({first}) AND ({condition})"),
            None => condition,
        });
    }

    /// The update expression, the condition, and the placeholders.
    pub(super) fn finish(
        self,
    ) -> (
        String,
        Option<String>,
        HashMap<String, String>,
        HashMap<String, AttributeValue>,
    ) {
        let mut expression = String::new();
        if !self.sets.is_empty() {
            expression.push_str("SET ");
            expression.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            if !expression.is_empty() {
                expression.push(' ');
            }
            expression.push_str("REMOVE ");
            expression.push_str(&self.removes.join(", "));
        }
        (expression, self.condition, self.names, self.values)
    }
}
