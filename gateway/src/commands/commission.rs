//! Commissioning requests (`<base>/bus/<id>/request`) routed to their bus task, like
//! commands: refused here when commissioning is off, the bus is unknown or not a Modbus
//! bus, or its queue is full (`commission::gateway` answers those).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Request, Router};
use crate::{
    commission::{gateway, wire::Answer},
    model::Bus,
};

impl Router {
    /// Queue the job `make` builds for the bus of request topic `topic` (after the checks:
    /// `make` may refuse too); `Err`: the answer that refuses it.
    pub(crate) fn commission(
        &self,
        topic: &str,
        make: impl FnOnce(&Arc<Bus>) -> Result<gateway::Job, Answer>,
    ) -> Result<(), Answer> {
        let routes = self.current();
        let model = &routes.model;
        let id = model.topics().bus_of(topic).unwrap_or(topic);
        let at = model.buses.iter().position(|b| b.id == id);
        let bus = at.and_then(|i| model.buses.get(i));
        gateway::accepts(model.commissioning, bus, id)?;
        let (Some(i), Some(bus)) = (at, bus) else {
            return Err(Answer::refused(format!("the gateway has no bus `{id}`")));
        };
        let job = make(bus)?;
        let Some(tx) = routes.buses.get(i) else {
            return Err(Answer::failed(format!("bus `{id}` has no task"), 69));
        };
        match tx.try_send(Request::Commission(Box::new(job))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Answer::failed(
                format!("bus `{id}` has too many requests waiting; try again"),
                69,
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Answer::failed(
                format!("bus `{id}` is restarting or the gateway is stopping; try again"),
                69,
            )),
        }
    }
}
