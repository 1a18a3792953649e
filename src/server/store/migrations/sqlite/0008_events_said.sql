-- What is unread in a room is what was said after a read mark (`unread_since`): messages and actions by
-- others. Through the (room, seq) key alone, that query read every event after the mark, joins and
-- leaves too, and a busy room's joins and leaves far outnumber what is said: in a storm of 10,000 joins,
-- each new guest's unread count read through thousands of join lines. This index holds only what was
-- said, so the count reads those rows and no others. Its WHERE is written as the query's is, which is
-- how SQLite knows it may use it.
CREATE INDEX events_said ON events (room, seq) WHERE kind IN ('message', 'action');
