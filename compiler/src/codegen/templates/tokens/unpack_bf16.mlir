          %{{out}}_s{{m}} = arith.constant 16 : i32
          %{{out}}_l{{m}} = arith.shli %{{out}}_m{{m}}, %{{out}}_s{{m}} : i32
          %{{out}}_h{{m}}m = arith.constant -65536 : i32
          %{{out}}_h{{m}} = arith.andi %{{out}}_m{{m}}, %{{out}}_h{{m}}m : i32
          %{{out}}_{{low}} = arith.bitcast %{{out}}_l{{m}} : i32 to f32
          %{{out}}_{{high}} = arith.bitcast %{{out}}_h{{m}} : i32 to f32
