from spindle.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("model", "instructions", "input", "tools", "prompt_cache_key", "thread_id", "window_id", "sub_agent_kind", "base", "history_digest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    SUB_AGENT_KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    instructions: str
    input: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tool]
    prompt_cache_key: str
    thread_id: str
    window_id: str
    sub_agent_kind: str
    base: WindowBase
    history_digest: bytes
    def __init__(self, model: _Optional[str] = ..., instructions: _Optional[str] = ..., input: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.Tool, _Mapping]]] = ..., prompt_cache_key: _Optional[str] = ..., thread_id: _Optional[str] = ..., window_id: _Optional[str] = ..., sub_agent_kind: _Optional[str] = ..., base: _Optional[_Union[WindowBase, _Mapping]] = ..., history_digest: _Optional[bytes] = ...) -> None: ...

class WindowBase(_message.Message):
    __slots__ = ("item_count", "history_digest")
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    item_count: int
    history_digest: bytes
    def __init__(self, item_count: _Optional[int] = ..., history_digest: _Optional[bytes] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("usage", "response_id", "endpoint")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    usage: _common_pb2.Usage
    response_id: str
    endpoint: str
    def __init__(self, usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., response_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[GenerateEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[GenerateEvent, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("text_delta", "item_done", "completed")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    ITEM_DONE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    text_delta: _common_pb2.TextDelta
    item_done: _common_pb2.ItemDone
    completed: Completed
    def __init__(self, text_delta: _Optional[_Union[_common_pb2.TextDelta, _Mapping]] = ..., item_done: _Optional[_Union[_common_pb2.ItemDone, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ...) -> None: ...
