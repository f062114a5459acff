"""The home: its snapshot and registry, the entities file, and MQTT discovery."""

from assistant.home.entities_file import load_home
from assistant.home.model import Area, Entity, Floor, Home, entity_tag
from assistant.home.registry import Listener, Registry

__all__ = ["Area", "Entity", "Floor", "Home", "Listener", "Registry", "entity_tag", "load_home"]
