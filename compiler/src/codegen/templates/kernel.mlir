    gpu.func @{{name}}({{args}}) kernel {
{{body}}
      }
      gpu.return
    }
