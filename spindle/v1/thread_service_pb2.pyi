import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from spindle.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ThreadOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THREAD_ORIGIN_UNSPECIFIED: _ClassVar[ThreadOrigin]
    THREAD_ORIGIN_START: _ClassVar[ThreadOrigin]
    THREAD_ORIGIN_SPAWN: _ClassVar[ThreadOrigin]
    THREAD_ORIGIN_FORK: _ClassVar[ThreadOrigin]
    THREAD_ORIGIN_RESUME: _ClassVar[ThreadOrigin]

class ThreadStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THREAD_STATUS_UNSPECIFIED: _ClassVar[ThreadStatus]
    THREAD_STATUS_ACTIVE: _ClassVar[ThreadStatus]
    THREAD_STATUS_ARCHIVED: _ClassVar[ThreadStatus]

class ForkMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORK_MODE_UNSPECIFIED: _ClassVar[ForkMode]
    FORK_MODE_FULL_HISTORY: _ClassVar[ForkMode]
    FORK_MODE_LAST_N_TURNS: _ClassVar[ForkMode]

class TrustSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUST_SOURCE_UNSPECIFIED: _ClassVar[TrustSource]
    TRUST_SOURCE_PERSISTED: _ClassVar[TrustSource]
    TRUST_SOURCE_IN_MEMORY: _ClassVar[TrustSource]

class DisconnectPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_POLICY_UNSPECIFIED: _ClassVar[DisconnectPolicy]
    DISCONNECT_POLICY_CANCEL: _ClassVar[DisconnectPolicy]
    DISCONNECT_POLICY_CONTINUE: _ClassVar[DisconnectPolicy]

class BusyPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUSY_POLICY_UNSPECIFIED: _ClassVar[BusyPolicy]
    BUSY_POLICY_REJECT: _ClassVar[BusyPolicy]
    BUSY_POLICY_INTERRUPT: _ClassVar[BusyPolicy]
    BUSY_POLICY_ENQUEUE: _ClassVar[BusyPolicy]

class TurnStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_STATUS_UNSPECIFIED: _ClassVar[TurnStatus]
    TURN_STATUS_RUNNING: _ClassVar[TurnStatus]
    TURN_STATUS_COMPLETED: _ClassVar[TurnStatus]
    TURN_STATUS_INTERRUPTED: _ClassVar[TurnStatus]
    TURN_STATUS_FAILED: _ClassVar[TurnStatus]
THREAD_ORIGIN_UNSPECIFIED: ThreadOrigin
THREAD_ORIGIN_START: ThreadOrigin
THREAD_ORIGIN_SPAWN: ThreadOrigin
THREAD_ORIGIN_FORK: ThreadOrigin
THREAD_ORIGIN_RESUME: ThreadOrigin
THREAD_STATUS_UNSPECIFIED: ThreadStatus
THREAD_STATUS_ACTIVE: ThreadStatus
THREAD_STATUS_ARCHIVED: ThreadStatus
FORK_MODE_UNSPECIFIED: ForkMode
FORK_MODE_FULL_HISTORY: ForkMode
FORK_MODE_LAST_N_TURNS: ForkMode
TRUST_SOURCE_UNSPECIFIED: TrustSource
TRUST_SOURCE_PERSISTED: TrustSource
TRUST_SOURCE_IN_MEMORY: TrustSource
DISCONNECT_POLICY_UNSPECIFIED: DisconnectPolicy
DISCONNECT_POLICY_CANCEL: DisconnectPolicy
DISCONNECT_POLICY_CONTINUE: DisconnectPolicy
BUSY_POLICY_UNSPECIFIED: BusyPolicy
BUSY_POLICY_REJECT: BusyPolicy
BUSY_POLICY_INTERRUPT: BusyPolicy
BUSY_POLICY_ENQUEUE: BusyPolicy
TURN_STATUS_UNSPECIFIED: TurnStatus
TURN_STATUS_RUNNING: TurnStatus
TURN_STATUS_COMPLETED: TurnStatus
TURN_STATUS_INTERRUPTED: TurnStatus
TURN_STATUS_FAILED: TurnStatus

class ProjectTrust(_message.Message):
    __slots__ = ("project_path", "trusted", "source")
    PROJECT_PATH_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    project_path: str
    trusted: bool
    source: TrustSource
    def __init__(self, project_path: _Optional[str] = ..., trusted: _Optional[bool] = ..., source: _Optional[_Union[TrustSource, str]] = ...) -> None: ...

class Thread(_message.Message):
    __slots__ = ("id", "parent_id", "origin", "session_origin", "depth", "agent_nickname", "agent_role", "sub_agent_kind", "prompt_cache_key", "window_generation", "cwd", "model", "instructions", "status", "parent_spawn_call_id", "trust", "create_time", "update_time", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    AGENT_NICKNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ROLE_FIELD_NUMBER: _ClassVar[int]
    SUB_AGENT_KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAWN_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    parent_id: str
    origin: ThreadOrigin
    session_origin: ThreadOrigin
    depth: int
    agent_nickname: str
    agent_role: str
    sub_agent_kind: str
    prompt_cache_key: str
    window_generation: int
    cwd: str
    model: str
    instructions: str
    status: ThreadStatus
    parent_spawn_call_id: str
    trust: ProjectTrust
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., parent_id: _Optional[str] = ..., origin: _Optional[_Union[ThreadOrigin, str]] = ..., session_origin: _Optional[_Union[ThreadOrigin, str]] = ..., depth: _Optional[int] = ..., agent_nickname: _Optional[str] = ..., agent_role: _Optional[str] = ..., sub_agent_kind: _Optional[str] = ..., prompt_cache_key: _Optional[str] = ..., window_generation: _Optional[int] = ..., cwd: _Optional[str] = ..., model: _Optional[str] = ..., instructions: _Optional[str] = ..., status: _Optional[_Union[ThreadStatus, str]] = ..., parent_spawn_call_id: _Optional[str] = ..., trust: _Optional[_Union[ProjectTrust, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartThreadRequest(_message.Message):
    __slots__ = ("cwd", "model", "instructions", "agent_nickname", "agent_role", "request_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CWD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    AGENT_NICKNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ROLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    cwd: str
    model: str
    instructions: str
    agent_nickname: str
    agent_role: str
    request_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, cwd: _Optional[str] = ..., model: _Optional[str] = ..., instructions: _Optional[str] = ..., agent_nickname: _Optional[str] = ..., agent_role: _Optional[str] = ..., request_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartThreadResponse(_message.Message):
    __slots__ = ("thread", "warnings")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ForkOptions(_message.Message):
    __slots__ = ("parent_spawn_call_id", "mode", "last_n_turns", "at_turn_id")
    PARENT_SPAWN_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LAST_N_TURNS_FIELD_NUMBER: _ClassVar[int]
    AT_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    parent_spawn_call_id: str
    mode: ForkMode
    last_n_turns: int
    at_turn_id: str
    def __init__(self, parent_spawn_call_id: _Optional[str] = ..., mode: _Optional[_Union[ForkMode, str]] = ..., last_n_turns: _Optional[int] = ..., at_turn_id: _Optional[str] = ...) -> None: ...

class SpawnThreadRequest(_message.Message):
    __slots__ = ("parent_id", "fork", "agent_nickname", "agent_role", "sub_agent_kind", "model", "instructions", "request_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    AGENT_NICKNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ROLE_FIELD_NUMBER: _ClassVar[int]
    SUB_AGENT_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    fork: ForkOptions
    agent_nickname: str
    agent_role: str
    sub_agent_kind: str
    model: str
    instructions: str
    request_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, parent_id: _Optional[str] = ..., fork: _Optional[_Union[ForkOptions, _Mapping]] = ..., agent_nickname: _Optional[str] = ..., agent_role: _Optional[str] = ..., sub_agent_kind: _Optional[str] = ..., model: _Optional[str] = ..., instructions: _Optional[str] = ..., request_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SpawnThreadResponse(_message.Message):
    __slots__ = ("thread",)
    THREAD_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ...) -> None: ...

class ResumeThreadRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class ResumeThreadResponse(_message.Message):
    __slots__ = ("thread", "history_length")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    history_length: int
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ..., history_length: _Optional[int] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class GetThreadResponse(_message.Message):
    __slots__ = ("thread",)
    THREAD_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ...) -> None: ...

class ListThreadsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "parent_id", "include_archived", "status", "metadata", "order_by")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    parent_id: str
    include_archived: bool
    status: ThreadStatus
    metadata: _containers.ScalarMap[str, str]
    order_by: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., parent_id: _Optional[str] = ..., include_archived: _Optional[bool] = ..., status: _Optional[_Union[ThreadStatus, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., order_by: _Optional[str] = ...) -> None: ...

class ListThreadsResponse(_message.Message):
    __slots__ = ("threads", "next_page_token")
    THREADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    threads: _containers.RepeatedCompositeFieldContainer[Thread]
    next_page_token: str
    def __init__(self, threads: _Optional[_Iterable[_Union[Thread, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateThreadRequest(_message.Message):
    __slots__ = ("thread", "update_mask")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateThreadResponse(_message.Message):
    __slots__ = ("thread",)
    THREAD_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ...) -> None: ...

class ListThreadItemsRequest(_message.Message):
    __slots__ = ("thread_id", "page_size", "page_token")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    page_size: int
    page_token: str
    def __init__(self, thread_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListThreadItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ArchiveThreadRequest(_message.Message):
    __slots__ = ("thread_id", "interrupt_running")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_RUNNING_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    interrupt_running: bool
    def __init__(self, thread_id: _Optional[str] = ..., interrupt_running: _Optional[bool] = ...) -> None: ...

class ArchiveThreadResponse(_message.Message):
    __slots__ = ("thread",)
    THREAD_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ...) -> None: ...

class UnarchiveThreadRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class UnarchiveThreadResponse(_message.Message):
    __slots__ = ("thread",)
    THREAD_FIELD_NUMBER: _ClassVar[int]
    thread: Thread
    def __init__(self, thread: _Optional[_Union[Thread, _Mapping]] = ...) -> None: ...

class DeleteThreadRequest(_message.Message):
    __slots__ = ("thread_id", "interrupt_running")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_RUNNING_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    interrupt_running: bool
    def __init__(self, thread_id: _Optional[str] = ..., interrupt_running: _Optional[bool] = ...) -> None: ...

class DeleteThreadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunTurnRequest(_message.Message):
    __slots__ = ("thread_id", "input", "tools", "request_id", "on_disconnect", "when_busy")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    WHEN_BUSY_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    input: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tool]
    request_id: str
    on_disconnect: DisconnectPolicy
    when_busy: BusyPolicy
    def __init__(self, thread_id: _Optional[str] = ..., input: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.Tool, _Mapping]]] = ..., request_id: _Optional[str] = ..., on_disconnect: _Optional[_Union[DisconnectPolicy, str]] = ..., when_busy: _Optional[_Union[BusyPolicy, str]] = ...) -> None: ...

class TurnStarted(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class TurnCompleted(_message.Message):
    __slots__ = ("turn_id", "status", "usage", "pending_function_calls", "error")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FUNCTION_CALLS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    status: TurnStatus
    usage: _common_pb2.Usage
    pending_function_calls: _containers.RepeatedCompositeFieldContainer[_common_pb2.FunctionCall]
    error: _status_pb2.Status
    def __init__(self, turn_id: _Optional[str] = ..., status: _Optional[_Union[TurnStatus, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., pending_function_calls: _Optional[_Iterable[_Union[_common_pb2.FunctionCall, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("sequence", "turn_started", "text_delta", "item_done", "turn_completed")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TURN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    ITEM_DONE_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    turn_started: TurnStarted
    text_delta: _common_pb2.TextDelta
    item_done: _common_pb2.ItemDone
    turn_completed: TurnCompleted
    def __init__(self, sequence: _Optional[int] = ..., turn_started: _Optional[_Union[TurnStarted, _Mapping]] = ..., text_delta: _Optional[_Union[_common_pb2.TextDelta, _Mapping]] = ..., item_done: _Optional[_Union[_common_pb2.ItemDone, _Mapping]] = ..., turn_completed: _Optional[_Union[TurnCompleted, _Mapping]] = ...) -> None: ...

class RunTurnResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TurnEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TurnEvent, _Mapping]]] = ...) -> None: ...

class WatchTurnRequest(_message.Message):
    __slots__ = ("thread_id", "turn_id", "after_sequence")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    turn_id: str
    after_sequence: int
    def __init__(self, thread_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchTurnResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TurnEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TurnEvent, _Mapping]]] = ...) -> None: ...

class InterruptTurnRequest(_message.Message):
    __slots__ = ("thread_id", "turn_id")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    turn_id: str
    def __init__(self, thread_id: _Optional[str] = ..., turn_id: _Optional[str] = ...) -> None: ...

class InterruptTurnResponse(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("id", "thread_id", "status", "usage", "error", "create_time", "complete_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    thread_id: str
    status: TurnStatus
    usage: _common_pb2.Usage
    error: _status_pb2.Status
    create_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., thread_id: _Optional[str] = ..., status: _Optional[_Union[TurnStatus, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTurnsRequest(_message.Message):
    __slots__ = ("thread_id", "page_size", "page_token")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    page_size: int
    page_token: str
    def __init__(self, thread_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTurnsResponse(_message.Message):
    __slots__ = ("turns", "next_page_token")
    TURNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    next_page_token: str
    def __init__(self, turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
