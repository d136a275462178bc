from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("username", "device_id", "school_id", "app_time_ms", "app_version", "platform", "session_id", "app_session_started", "app_session_ended", "book_opened", "book_closed", "page_viewed", "resource_opened", "lp_step_completed", "flashcard_reviewed", "cam_status")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHOOL_ID_FIELD_NUMBER: _ClassVar[int]
    APP_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    APP_SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    APP_SESSION_ENDED_FIELD_NUMBER: _ClassVar[int]
    BOOK_OPENED_FIELD_NUMBER: _ClassVar[int]
    BOOK_CLOSED_FIELD_NUMBER: _ClassVar[int]
    PAGE_VIEWED_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_OPENED_FIELD_NUMBER: _ClassVar[int]
    LP_STEP_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FLASHCARD_REVIEWED_FIELD_NUMBER: _ClassVar[int]
    CAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    username: str
    device_id: str
    school_id: str
    app_time_ms: int
    app_version: str
    platform: str
    session_id: str
    app_session_started: AppSessionStarted
    app_session_ended: AppSessionEnded
    book_opened: BookOpened
    book_closed: BookClosed
    page_viewed: PageViewed
    resource_opened: ResourceOpened
    lp_step_completed: LearningPathStepCompleted
    flashcard_reviewed: FlashcardReviewed
    cam_status: CamStatus
    def __init__(self, username: _Optional[str] = ..., device_id: _Optional[str] = ..., school_id: _Optional[str] = ..., app_time_ms: _Optional[int] = ..., app_version: _Optional[str] = ..., platform: _Optional[str] = ..., session_id: _Optional[str] = ..., app_session_started: _Optional[_Union[AppSessionStarted, _Mapping]] = ..., app_session_ended: _Optional[_Union[AppSessionEnded, _Mapping]] = ..., book_opened: _Optional[_Union[BookOpened, _Mapping]] = ..., book_closed: _Optional[_Union[BookClosed, _Mapping]] = ..., page_viewed: _Optional[_Union[PageViewed, _Mapping]] = ..., resource_opened: _Optional[_Union[ResourceOpened, _Mapping]] = ..., lp_step_completed: _Optional[_Union[LearningPathStepCompleted, _Mapping]] = ..., flashcard_reviewed: _Optional[_Union[FlashcardReviewed, _Mapping]] = ..., cam_status: _Optional[_Union[CamStatus, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RawEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, events: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppSessionStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AppSessionEnded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BookOpened(_message.Message):
    __slots__ = ("book_id",)
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    book_id: str
    def __init__(self, book_id: _Optional[str] = ...) -> None: ...

class BookClosed(_message.Message):
    __slots__ = ("book_id",)
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    book_id: str
    def __init__(self, book_id: _Optional[str] = ...) -> None: ...

class PageViewed(_message.Message):
    __slots__ = ("book_id", "page", "duration_ms")
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    book_id: str
    page: int
    duration_ms: int
    def __init__(self, book_id: _Optional[str] = ..., page: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class ResourceOpened(_message.Message):
    __slots__ = ("resource_id", "book_id")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    book_id: str
    def __init__(self, resource_id: _Optional[str] = ..., book_id: _Optional[str] = ...) -> None: ...

class LearningPathStepCompleted(_message.Message):
    __slots__ = ("lp_id", "step_id", "score")
    LP_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    lp_id: str
    step_id: str
    score: float
    def __init__(self, lp_id: _Optional[str] = ..., step_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class FlashcardReviewed(_message.Message):
    __slots__ = ("deck_id", "card_id", "grade", "response_ms")
    DECK_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MS_FIELD_NUMBER: _ClassVar[int]
    deck_id: str
    card_id: str
    grade: int
    response_ms: int
    def __init__(self, deck_id: _Optional[str] = ..., card_id: _Optional[str] = ..., grade: _Optional[int] = ..., response_ms: _Optional[int] = ...) -> None: ...

class CamStatus(_message.Message):
    __slots__ = ("foreground_app", "book_id", "page", "screen_on", "battery_pct")
    FOREGROUND_APP_FIELD_NUMBER: _ClassVar[int]
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SCREEN_ON_FIELD_NUMBER: _ClassVar[int]
    BATTERY_PCT_FIELD_NUMBER: _ClassVar[int]
    foreground_app: str
    book_id: str
    page: int
    screen_on: bool
    battery_pct: int
    def __init__(self, foreground_app: _Optional[str] = ..., book_id: _Optional[str] = ..., page: _Optional[int] = ..., screen_on: _Optional[bool] = ..., battery_pct: _Optional[int] = ...) -> None: ...
