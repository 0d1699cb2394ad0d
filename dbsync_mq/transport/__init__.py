"""The messaging edge: RabbitMQ topology, publishing and consuming. Knows nothing of SQL."""
