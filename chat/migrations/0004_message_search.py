"""An index for searching message text: full-text where the database has it.

PostgreSQL: a GIN index on `to_tsvector('simple', content)` (the 'simple' configuration: no
stemming or stop words, so any language's words match as written). SQLite: an FTS5 table with
the trigram tokenizer over `chat_message.content` (external content, kept in step by
triggers), so a substring of three or more characters is found through the index, in any
script, Chinese included. Other databases: no index; chat/search.py falls back to a scan.
"""

from django.db import migrations

SQLITE_FORWARD = [
    "CREATE VIRTUAL TABLE chat_message_fts USING fts5(content, content='chat_message', content_rowid='id', tokenize='trigram')",
    "INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')",
    """CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message BEGIN
         INSERT INTO chat_message_fts(rowid, content) VALUES (new.id, new.content); END""",
    """CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message BEGIN
         INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.id, old.content); END""",
    """CREATE TRIGGER chat_message_fts_update AFTER UPDATE OF content ON chat_message BEGIN
         INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.id, old.content);
         INSERT INTO chat_message_fts(rowid, content) VALUES (new.id, new.content); END""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS chat_message_fts_update",
    "DROP TRIGGER IF EXISTS chat_message_fts_delete",
    "DROP TRIGGER IF EXISTS chat_message_fts_insert",
    "DROP TABLE IF EXISTS chat_message_fts",
]
POSTGRES_FORWARD = ["CREATE INDEX chat_message_content_fts ON chat_message USING gin (to_tsvector('simple', content))"]
POSTGRES_BACKWARD = ["DROP INDEX IF EXISTS chat_message_content_fts"]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_message_tree")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE_FORWARD, "postgresql": POSTGRES_FORWARD}),
            _run({"sqlite": SQLITE_BACKWARD, "postgresql": POSTGRES_BACKWARD}),
        ),
    ]
