    gpu.func @{{name}}({{args}}) workgroup(%ks: memref<{{kw}}xvector<4xi32>, 3>, %vs: memref<{{vw}}xvector<4xi32>, 3>) kernel {
{{body}}
      }
      gpu.return
    }
