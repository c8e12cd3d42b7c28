//! One `/stats` notice per task, replaced as the task's trouble changes.

use lpcmon_api::AppState;

pub(crate) struct Notice {
    state: AppState,
    current: Option<String>,
}

impl Notice {
    pub(crate) fn new(state: AppState) -> Self {
        Notice { state, current: None }
    }

    /// Shows `text` instead of the previous notice (and logs it once, when it changes).
    pub(crate) fn set(&mut self, text: String) {
        if self.current.as_deref() == Some(text.as_str()) {
            return;
        }
        tracing::warn!("{text}");
        self.clear();
        self.state.add_notice(text.clone());
        self.current = Some(text);
    }

    pub(crate) fn clear(&mut self) {
        if let Some(old) = self.current.take() {
            tracing::info!(resolved = %old, "fleet: recovered");
            self.state.remove_notice(&old);
        }
    }
}
