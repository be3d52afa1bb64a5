public enum _Y {}
