"""One look for every dock: a scroll area, a collapsed "Advanced options" section, the job panel.

napari docks ``widget.native``; docks have no scroll area of their own, so a dock taller than
a 768-pixel laptop screen pushes its Run button off-screen. :func:`dock` puts the controls in
a scroll area inside the widget, folds the rarely changed ones into a collapsible section
(superqt, which napari ships) and keeps the dock narrow enough to leave the canvas usable.
"""

from __future__ import annotations

import html
import inspect
from typing import Any

from magicgui.widgets import Container

#: Widest a dock asks to be (pixels); the form's labels and fields share it.
MAX_MIN_WIDTH = 400


def collapsible(title: str, widgets: list[Any]) -> Any:
    """A collapsed-by-default section holding magicgui ``widgets`` (superqt's QCollapsible)."""
    from superqt import QCollapsible

    inner = Container(widgets=widgets)
    section = QCollapsible(title)
    section.addWidget(inner.native)
    section.collapse(animate=False)
    section._inner = inner  # keep the magicgui container alive with its Qt widget
    return section


def dock(
    widget: Container,
    main: list[Any],
    advanced: list[Any],
    jobs: Any,
    extra: tuple = (),
) -> None:
    """Lay ``widget`` out as a scroll area holding the ``main`` controls, a collapsed
    "Advanced options" section (when ``advanced`` is not empty) and ``extra`` Qt widgets (a
    plot), above the job panel, which stays in view under the scroll area: on a 768 px
    screen the 3D dock's Run, Cancel, progress and status were below the fold (issue 38).
    Changes of any control are re-emitted as ``widget.changed`` (for
    :func:`~._common.watch_inputs`)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    Container.__init__(widget, widgets=[], labels=False)
    inner = Container(widgets=list(main))
    parts = [inner]
    layout = inner.native.layout()
    widget.help_button = _help_button(widget, [*main, *advanced, jobs])
    layout.insertWidget(0, widget.help_button, 0, Qt.AlignmentFlag.AlignRight)
    items = list(extra)
    widget.advanced_section = None
    if advanced:
        widget.advanced_section = collapsible("Advanced options", advanced)
        items.insert(0, widget.advanced_section)
        parts.append(widget.advanced_section._inner)
    for item in items:
        layout.addWidget(item)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setWidget(inner.native)
    # Wide enough for the controls plus a vertical scroll bar (nothing cut on the right), up
    # to MAX_MIN_WIDTH; beyond that a horizontal bar appears rather than a squeezed canvas.
    bar = scroll.verticalScrollBar().sizeHint().width()
    scroll.setMinimumWidth(min(MAX_MIN_WIDTH, inner.native.sizeHint().width() + bar + 4))
    widget.native.layout().addWidget(scroll)
    widget.native.layout().addWidget(jobs.native)
    widget.native.layout().setContentsMargins(0, 0, 0, 0)
    widget.form, widget.scroll_area = inner, scroll
    for part in parts:
        part.changed.connect(lambda *_: widget.changed.emit(widget))
    widget.native.setProperty(DOCK_PROPERTY, True)
    from qtpy.QtCore import QTimer

    # Once napari has put the dock in its window: tab it with the plugin's other docks.
    QTimer.singleShot(0, lambda: tab_with_siblings(widget.native))


#: Qt property marking the plugin's dock contents (to find its other docks in the window).
DOCK_PROPERTY = "empanada_napari_dock"


def tab_with_siblings(native: Any) -> None:
    """Put the dock holding ``native`` in a tab beside the plugin's other docks on the same
    side of the window, in front. Stacked, five docks on a 768 px laptop screen got 100-250 px
    each (Save's button half hidden, Finetune's plot cut, issue 37); tabbed, each keeps the
    full height. A dock the user floats or moves elsewhere is left where it is."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    try:
        this = native.parent()
        while this is not None and not isinstance(this, QDockWidget):
            this = this.parent()
        window = this.parent() if this is not None else None
        if this is None or not isinstance(window, QMainWindow) or this.isFloating():
            return
        area = window.dockWidgetArea(this)
        others = [
            d
            for d in window.findChildren(QDockWidget)
            if d is not this
            and d.isVisible()
            and not d.isFloating()
            and window.dockWidgetArea(d) == area
            and d.widget() is not None
            and d.widget().findChild(type(native)) is not None
            and _is_plugin_dock(d)
        ]
        if others:
            window.tabifyDockWidget(others[-1], this)
            this.show()
            this.raise_()
    except RuntimeError:  # the dock was closed before this ran
        return


def _is_plugin_dock(dock_widget: Any) -> bool:
    from qtpy.QtWidgets import QWidget

    inner = dock_widget.widget()
    return bool(inner.property(DOCK_PROPERTY)) or any(
        bool(w.property(DOCK_PROPERTY)) for w in inner.findChildren(QWidget)
    )


def _controls(widgets: list[Any]) -> list[Any]:
    """The magicgui controls in ``widgets``, nested containers flattened."""
    found: list[Any] = []
    for w in widgets:
        if isinstance(w, Container):
            found += _controls(list(w))
        elif hasattr(w, "tooltip"):
            found.append(w)
    return found


def help_text(widget: Any, widgets: list[Any]) -> str:
    """What a dock does (its ``user_help``, else its docstring) and every control with its
    tooltip, as HTML.

    Built from the tooltips, which come from the settings' help and defaults
    (:mod:`~empanada_napari.core.settings`), so the help cannot drift from the controls."""
    doc = getattr(widget, "user_help", None) or inspect.getdoc(type(widget)) or ""
    intro = doc.split("\n\n")[0].replace("\n", " ")
    rows = []
    for c in _controls(widgets):
        tip = (c.tooltip or "").strip()
        label = str(getattr(c, "label", "") or getattr(c, "text", "") or "").strip()
        if tip and label:
            label, tip = html.escape(label, quote=False), html.escape(tip, quote=False)
            rows.append(f"<li><b>{label}</b>: {tip}</li>")
    page = (
        "More in the user guide: docs/widgets/ and docs/*.md of the empanada-napari source "
        "(README, Widgets section)."
    )
    return f"<p>{html.escape(intro, quote=False)}</p><ul>{''.join(rows)}</ul><p><i>{page}</i></p>"


def _help_button(widget: Any, widgets: list[Any]) -> Any:
    """A small "?" button (top right) that shows :func:`help_text` in a window that scrolls
    and never grows taller than most of the screen (a 768 px laptop keeps its Close button
    in view)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QToolButton

    button = QToolButton()
    button.setText("?")
    button.setToolTip("What this dock does and what every setting means, with defaults")

    def show() -> None:
        box = help_dialog(widget.native, help_text(widget, widgets))
        box.setWindowModality(Qt.WindowModality.NonModal)  # the viewer stays usable
        widget.help_box = box
        box.show()

    button.clicked.connect(show)
    return button


def help_dialog(parent: Any, html_text: str) -> Any:
    """A dialog with ``html_text`` in a scrolling text view and a Close button, at most
    80 % of the screen's height."""
    from qtpy.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

    box = QDialog(parent)
    box.setWindowTitle("Help")
    view = QTextBrowser(box)
    view.setOpenExternalLinks(True)
    view.setHtml(html_text)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, parent=box)
    buttons.rejected.connect(box.close)
    layout = QVBoxLayout(box)
    layout.addWidget(view)
    layout.addWidget(buttons)
    screen = box.screen() if hasattr(box, "screen") else None
    height = screen.availableGeometry().height() if screen is not None else 768
    view.document().setTextWidth(460)
    wanted = int(view.document().size().height()) + 80
    box.resize(500, max(200, min(wanted, int(0.8 * height))))
    box.text = view.toHtml  # what the dialog says (tests, scripts)
    return box
