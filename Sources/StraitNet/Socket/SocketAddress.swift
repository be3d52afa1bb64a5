// SocketAddress lives in StraitSystem beside IPAddress: one address type, taken by every socket call
// there. StraitNet's API takes it everywhere, so a module that imports StraitNet sees it too.
@_exported import enum StraitSystem.SocketAddress
