"""Label patches: the `update` command of every kind whose objects are otherwise fixed at
creation (IPPool, IPClaim, IPClass, Pod, Service, PriorityClass; a Node has node.update, which
also takes taints and the cordon).

Labels are what controllers and people select objects by, so changing them must not mean
deleting the object: deleting a claim to relabel it would free its address, deleting a pod
would move it. The body is a JSON merge patch (RFC 7386) of the object's metadata, as
`kubectl label` sends: `{"metadata": {"labels": {"team": "web", "old": null}, "resourceVersion":
41}}`. Labels merge into the object's (a null value removes one, an absent one stays);
`"labels": null` removes them all; a `resourceVersion` makes the update conditional, as in a
Kubernetes patch: `conflict` when the object changed since it was read at that version. Nothing
else of these kinds can change: a patch naming `spec` or `status` is refused, saying to delete and
create. A patch that changes nothing writes nothing (no new resourceVersion, no event).

Each kind's module finds the object and checks who may change it, as its delete does; this
module checks the patch and computes the labels it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from statemachine.context import MODIFIED, Context
from statemachine.errors import changed_since_read, invalid
from statemachine.fields import check_labels, check_map, check_name, check_resource_version, labels_max

_metadata_fields: Final = ("labels", "resourceVersion")
_fixed_parts = ("spec", "status")  # refused with a message of their own, not "unknown field"


@dataclass(frozen=True)
class LabelPatch:
    """A checked label patch. `name` is as given (a pool reference may hold '/', so each kind
    checks it); `namespace` is the checked namespace of a namespaced kind (its default when
    not given), "" for the others."""

    name: Any
    namespace: str
    labels: dict[str, str | None] | None  # the merge patch; None: the labels stay
    remove_all: bool  # `"labels": null`
    resource_version: int | None  # the precondition, when given


def check_patch(body: dict[str, Any], kind: str, namespaced: bool, default_namespace: str = "default") -> LabelPatch:
    allowed = ("name", "namespace", "metadata") if namespaced else ("name", "metadata")
    for part in _fixed_parts:
        if part in body:
            raise invalid(
                f"the {part} of {'an' if kind[0] in 'AEIOU' else 'a'} {kind} cannot be changed, only "
                f"metadata.labels: delete the {kind} and create it again to change its {part}",
                part,
            )
    check_map(body, "", allowed)
    if "metadata" in body and body["metadata"] is None:  # a merge patch's null would remove the whole part
        raise invalid("metadata cannot be removed; give the fields of it to change (null removes one)", "metadata")
    metadata = check_map(body.get("metadata"), "metadata", _metadata_fields)
    namespace = check_name(body.get("namespace", default_namespace), "namespace") if namespaced else ""
    labels: dict[str, str | None] | None = None
    remove_all = "labels" in metadata and metadata["labels"] is None
    given = metadata.get("labels")
    if given is not None:
        if not isinstance(given, dict):
            raise invalid("metadata.labels must be a map of strings (null removes a label)", "metadata.labels")
        for key, value in given.items():
            if not isinstance(key, str):
                raise invalid("metadata.labels keys must be strings", "metadata.labels")
            if value is not None and not isinstance(value, str):
                raise invalid(
                    f"metadata.labels.{key} must be a string (or null to remove the label)", f"metadata.labels.{key}"
                )
        labels = given
    subject = f"the {kind}"
    resource_version = check_resource_version(metadata.get("resourceVersion"), "metadata.resourceVersion", subject)
    return LabelPatch(body.get("name"), namespace, labels, remove_all, resource_version)


def patched_labels(obj: dict[str, Any], patch: LabelPatch, subject: str) -> dict[str, str] | None:
    """The object's labels after the patch, or None when the patch changes nothing. Refuses
    (`conflict`) when the patch's precondition names another resourceVersion than the object's:
    checked first, so a patch that would change nothing is refused too, as Kubernetes does.
    `subject` names the object in messages ("IPClaim default/web-1")."""
    metadata = obj["metadata"]
    current_version = metadata["resourceVersion"]
    if patch.resource_version is not None and patch.resource_version != current_version:
        raise changed_since_read(subject, obj["kind"], metadata["name"], current_version, patch.resource_version)
    before: dict[str, str] = metadata["labels"]
    if patch.remove_all:
        merged: dict[str, str] = {}
    elif patch.labels is None:
        return None
    else:
        merged = dict(before)
        for key, value in patch.labels.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    if len(merged) > labels_max:
        raise invalid(
            f"metadata.labels: {subject} would have {len(merged)} labels after this patch; at most {labels_max} "
            "are allowed",
            "metadata.labels",
        )
    labels = check_labels(merged, "metadata.labels")  # sorted, as a create stores them
    return None if labels == before else labels


def apply_patch(ctx: Context, key: bytes, obj: dict[str, Any], patch: LabelPatch, subject: str) -> bool:
    """Patch the labels of the object stored under key and write it (one MODIFIED event that
    carries the labels before); False, writing nothing, when the patch changes nothing. For an
    object stored as it is shown (claims, stored compactly with their allocations, do their own)."""
    labels = patched_labels(obj, patch, subject)
    if labels is None:
        return False
    labels_before = obj["metadata"]["labels"]
    obj["metadata"]["labels"] = labels
    ctx.write_object(key, obj["kind"], obj, MODIFIED, labels_before)
    return True
