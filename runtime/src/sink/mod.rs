//! Sinks: deliver records of chosen log topics back to store devices (`mqtt`: verdicts to POS
//! terminals, offers to signage), each a durable consumer of its topics.

pub mod mqtt;
