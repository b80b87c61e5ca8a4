"""Conversations become trees: each message gets a parent, each conversation its current leaf.

Existing conversations are linear, so every message's parent is the one before it (by
position) and the current leaf is the last message: nothing changes for them. Backwards, the
tree fields are dropped; messages keep their rows and positions (creation order), so a linear
conversation is exactly what it was. Branches made after this migration survive as rows too,
in the order they were written.
"""

import django.db.models.deletion
from django.db import migrations, models


def link_linear(apps, schema_editor):
    Conversation = apps.get_model("chat", "Conversation")
    Message = apps.get_model("chat", "Message")
    batch = []
    previous = {}  # conversation id -> last message id seen
    for message in Message.objects.order_by("conversation_id", "position").only("id", "conversation_id").iterator(chunk_size=2000):
        message.parent_id = previous.get(message.conversation_id)
        previous[message.conversation_id] = message.id
        batch.append(message)
        if len(batch) >= 2000:
            Message.objects.bulk_update(batch, ["parent"])
            batch = []
    if batch:
        Message.objects.bulk_update(batch, ["parent"])
    for conversation_id, leaf_id in previous.items():
        Conversation.objects.filter(pk=conversation_id).update(current_leaf_id=leaf_id)


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0002_invite"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="children", to="chat.message"),
        ),
        migrations.AddField(
            model_name="conversation",
            name="current_leaf",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                    related_name="+", to="chat.message"),
        ),
        migrations.AddField(
            model_name="message",
            name="history_truncated",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(link_linear, migrations.RunPython.noop),
    ]
