"""Which classes a training folder gets when labels are exported into it.

The export -> fine-tune hand-off depends on it: labels predicted by a model carry that model's
classes in their provenance, so a folder created from them records the model's classes, and
``segloop-train FOLDER --from MODEL`` accepts the folder without extra flags.  The command
line (``segloop export``), the Export widget and the Active-learning widget all call
:func:`open_for_export`, so the rule is the same everywhere:

* a new folder takes the classes and task given explicitly, else the model's (from the labels'
  provenance; an instance model's boundary class is not a folder class), else
  ``background, object`` / ``instance``;
* an existing folder keeps its classes and task.  Classes or a task given explicitly that
  differ are refused with the reason (a folder has one class list: label values are class
  indices), never silently ignored; ``replace`` replaces a sample, not the folder's classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from segloop.core.formats.trainfolder.folder import TrainingFolder
from segloop.core.formats.trainfolder.schema import INFO_FILE, TASKS
from segloop.errors import TrainingFolderError

__all__ = ["DEFAULT_CLASSES", "classes_from_model", "open_for_export"]

#: Classes of a new instance folder when neither the caller nor the labels' provenance name any.
DEFAULT_CLASSES = ("background", "object")


def classes_from_model(model: Mapping | None, postprocess: Mapping | None = None
                       ) -> tuple[tuple[str, ...], str] | None:
    """The folder classes and task for labels a model predicted, or None if ``model`` names none.

    Parameters
    ----------
    model : mapping or None
        The ``model`` record of a prediction's provenance (``classes``, ``task``).
    postprocess : mapping, optional
        The model's post-processing (``boundary_class``); without it a class named
        ``boundary`` of an instance model is taken as its boundary class.

    Returns
    -------
    (classes, task) or None
        For an instance model, its classes without the boundary class (the labels hold
        object ids, never the boundary): ``nuclei-unet`` -> ``("background", "nucleus")``.
    """
    model = model or {}
    classes, task = model.get("classes"), model.get("task")
    if not classes or task not in TASKS or not all(isinstance(c, str) for c in classes):
        return None
    classes = tuple(classes)
    if task == "instance":
        pp = postprocess if postprocess is not None else (model.get("postprocess") or {})
        if "boundary_class" in pp:
            boundary = int(pp["boundary_class"])
            classes = tuple(c for i, c in enumerate(classes) if i != boundary)
        else:
            classes = tuple(c for i, c in enumerate(classes) if not (i and c == "boundary"))
    return (classes, task) if len(classes) >= 2 else None


def open_for_export(path: str | os.PathLike, *, classes: Sequence[str] | None = None, task: str | None = None,
                    modality: str | None = None, model: Mapping | None = None,
                    postprocess: Mapping | None = None, flags: Mapping[str, str] | None = None) -> TrainingFolder:
    """Open the training folder at ``path``, or create it, for exporting labels into it.

    Parameters
    ----------
    path : path-like
    classes, task, modality : optional
        Given explicitly by the user.  For an existing folder, classes or a task that differ
        from the folder's are refused (modality is a property of each sample and may differ).
    model, postprocess : mapping, optional
        The provenance of the labels (see :func:`classes_from_model`): the classes and task of
        a new folder when none are given.
    flags : mapping, optional
        How the caller names ``classes`` and ``task`` in messages (``{"classes": "--classes"}``).

    Raises
    ------
    TrainingFolderError
        An existing folder with other classes or task than those given, or a path that
        cannot hold a training folder.
    """
    path = Path(path)
    names = {"classes": "classes", "task": "task", **(flags or {})}
    if classes is not None:
        classes = tuple(c.strip() for c in classes if c.strip())
        if len(classes) < 2:
            raise TrainingFolderError(f"{names['classes']} needs a background and at least one class, such as "
                                      f"background,nucleus; got {','.join(classes) or 'nothing'}")
    if (path / INFO_FILE).is_file():
        folder = TrainingFolder.open(path)
        info = folder.info
        diff = []
        if classes is not None and tuple(classes) != tuple(info.classes):
            diff.append(f"{names['classes']} {','.join(classes)} differ from its classes {','.join(info.classes)}")
        if task is not None and task != info.task:
            diff.append(f"{names['task']} {task} differs from its task {info.task}")
        if diff:
            raise TrainingFolderError(
                f"{path} already holds training data: {'; '.join(diff)}. A folder keeps one class list (label values "
                f"are class indices), and replacing a sample does not change it: export into a new folder, or leave "
                f"{names['classes']} out to use the folder's")
        return folder
    derived = classes_from_model(model, postprocess)
    if classes is None:
        classes = derived[0] if derived and (task is None or task == derived[1]) else DEFAULT_CLASSES
    if task is None:
        task = derived[1] if derived else "instance"
    return TrainingFolder.create(path, classes=classes, task=task, modality=modality or (model or {}).get("modality")
                                 or "other")
