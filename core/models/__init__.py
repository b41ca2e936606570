"""The data model: every mapped table, imported once here so that ``Base.metadata``
holds them all wherever the model is used (migrations, tests, reports).

``base`` has the declarative base; ``trial`` the study, its design, sites, users,
subjects, randomization, approvals and the audit trail; ``supply`` kit types, lots,
kits, shipments, visits, returns and the outbox. Import tables from here.
"""

from sqlalchemy.orm import configure_mappers

from core.models.base import Base, Timestamp
from core.models.integration import (
    ApiClient,
    ApiRequest,
    EligibilityAnswer,
    Event,
    EventDelivery,
    WebhookSubscription,
)
from core.models.supply import (
    Delivery,
    Kit,
    KitReturn,
    KitType,
    Lot,
    Notification,
    ReturnKit,
    Shipment,
    ShipmentKit,
    SiteSupply,
    SubjectVisit,
)
from core.models.trial import (
    Approval,
    Arm,
    AuditEvent,
    AuditHead,
    CapCounter,
    Depot,
    Factor,
    FactorLevel,
    IdempotencyRecord,
    ListEntry,
    MinimizationCount,
    Randomization,
    RandomizationEvent,
    RandomizationList,
    Site,
    StratumCounter,
    Study,
    StudyPhoneNumber,
    Subject,
    SubjectStatusChange,
    Unblinding,
    User,
    UserInvite,
    UserSite,
)

__all__ = [
    "ApiClient",
    "ApiRequest",
    "EligibilityAnswer",
    "Event",
    "EventDelivery",
    "WebhookSubscription",
    "Approval",
    "Arm",
    "AuditEvent",
    "AuditHead",
    "Base",
    "CapCounter",
    "Delivery",
    "Depot",
    "Factor",
    "FactorLevel",
    "IdempotencyRecord",
    "Kit",
    "KitReturn",
    "KitType",
    "ListEntry",
    "Lot",
    "MinimizationCount",
    "Notification",
    "Randomization",
    "RandomizationEvent",
    "RandomizationList",
    "ReturnKit",
    "Shipment",
    "ShipmentKit",
    "Site",
    "SiteSupply",
    "StratumCounter",
    "Study",
    "StudyPhoneNumber",
    "Subject",
    "SubjectStatusChange",
    "SubjectVisit",
    "Timestamp",
    "Unblinding",
    "User",
    "UserInvite",
    "UserSite",
]

# Configured now, once, not lazily by the first query: SQLAlchemy configures the
# mappers on first use, and a freshly booted server worker whose threads all
# query at that moment races in it (RecursionError, AttributeError: strategy;
# seen in tests/test_faults_pg.py when a killed worker's replacement took calls).
configure_mappers()
