// CStraitSystem has no code: it exists so Swift can import the headers in include/.
