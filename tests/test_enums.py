"""IdentityEnum: members hash as objects do, and behave as Enum members otherwise."""

import pickle

from quantum_sync.client.pathstate import TRANSITIONS, Event, Phase
from quantum_sync.client.reconcile import Action, Side
from quantum_sync.enums import IdentityEnum


def test_members_hash_by_identity():
    for enum_class in (Phase, Event, Side, Action):
        assert issubclass(enum_class, IdentityEnum)
        for member in enum_class:
            assert hash(member) == object.__hash__(member)


def test_members_are_still_enum_members():
    assert Action("upload") is Action.UPLOAD
    assert Phase["QUEUED"] is Phase.QUEUED
    assert pickle.loads(pickle.dumps(Side.CHANGED)) is Side.CHANGED
    assert Phase.IDLE == Phase.IDLE and Phase.IDLE != Phase.QUEUED
    assert TRANSITIONS[(Phase.IDLE, Event.REQUEST)] is Phase.QUEUED
